"""`python -m ftcompare.demo --experiment default --model 135m`: start the app on 127.0.0.1 (configs/demo.yaml)."""
from __future__ import annotations

import argparse
import os
import sys

from ..environment import exit_process
from ..errors import FtcError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ftcompare.demo", description=__doc__)
    ap.add_argument("--experiment", default=os.environ.get("EXPERIMENT", "default"))
    ap.add_argument("--model", default="135m", help="model alias whose base and merged variants are served")
    ap.add_argument("--port", type=int, help="default: configs/demo.yaml port")
    args = ap.parse_args(argv)
    try:
        from .. import config, paths

        # Local files only: the demo never reaches a hub, and Gradio sends no analytics.
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
        os.environ.setdefault("HF_HOME", str(paths.HF_HOME))
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        cfg = config.load_file("demo", config.DemoConfig)
        from .app import build_app, launch
        from .models import ModelPool, served_models

        sources = served_models(args.experiment, args.model)
        pool = ModelPool(sources, cfg.max_loaded_models)
        demo = build_app(pool, cfg, title=f"ftcompare demo: {args.experiment} / {args.model}")
        print(f"[demo] serving {', '.join(sources)} on http://{cfg.host}:{args.port or cfg.port} (Ctrl-C stops)",
              flush=True)
        launch(demo, cfg.host, args.port or cfg.port, block=True)
    except FtcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    exit_process(main())   # Ctrl-C stops the app: exit 0
