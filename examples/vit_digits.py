"""2-D positions in a small vision transformer, offline: scikit-learn's 1797 bundled 8x8 digits,
trained at 8x8 pixels (a 4x4 grid of 2x2 patches) with a learned absolute table, 2-D axial RoPE over
patch indices or over normalised patch centres, RoPE-Mixed, or nothing, and tested at 8x8 and on
the same test images upsampled to 12x12 and 16x16 (6x6 and 8x8 patches): resolution extrapolation.

    python examples/vit_digits.py                       # 5 encodings x 3 seeds, ~10 min on 2 cores
    python examples/vit_digits.py --quick               # 5 encodings, seed 0, 10 epochs: under a minute
    python examples/vit_digits.py --encodings axial mixed --seeds 0 --epochs 5

Prints a line per encoding and seed as each run ends. Writes digits.json, table.md and
accuracy.png in --out (default out/vision, out/vision-quick with --quick); docs/results-vision.md
shows a run. The model and the study are posenc.vision.vit.
"""

import sys

from posenc.vision.vit import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
