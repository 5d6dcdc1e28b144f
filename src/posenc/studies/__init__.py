"""Named studies beyond the main table, each rerun alone with ``compare --study NAME`` and each
resumable (finished runs are kept): ``lr`` (learning-rate sweep, then seeds at each variant's best
rate), ``extension`` (RoPE context extension: zero-shot schedules and short fine-tunes) and
``synthetic`` (a passkey-retrieval probe of length generalisation). ``table`` -- the comparison
itself -- is :mod:`posenc.sweep`. Each study writes ``<out>/<name>.json``, and
:mod:`posenc.report.studies` renders it.
"""

STUDIES: tuple[str, ...] = ("table", "lr", "extension", "synthetic")


def write_study(results: dict, out, render: str | None) -> None:
    """``<out>/<kind>.json``, and the page at ``render`` when asked (:func:`posenc.report.studies.render_study`)."""
    import json
    from pathlib import Path

    from posenc.io import atomic_write

    kind = results["kind"]
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out) / f"{kind}.json", json.dumps(results, indent=1))
    print(f"[{kind}] wrote {Path(out) / f'{kind}.json'} ({results['wall_time_s'] / 60:.1f} min)", flush=True)
    if render:
        from posenc.report.studies import render_study

        render_study(results, Path(render))
        print(f"[{kind}] wrote {render}", flush=True)
