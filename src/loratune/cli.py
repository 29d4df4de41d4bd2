"""The `loratune` command: parse options, call one library function, turn errors into one line.

Every command here is a thin wrapper; the work happens in the library modules, so everything the
CLI does can also be done from Python.

Each command imports its library modules inside its handler, the one place in loratune that does:
most of them import torch and transformers (seconds), and `loratune --help`, a mistyped flag or
`loratune models list` should answer at once. tests/test_architecture.py reads these imports too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from loratune.errors import LoratuneError, TrainingStopped

Handler = Callable[[argparse.Namespace], int]


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.max_steps=50 (repeatable)",
    )


def _is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun / accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args: argparse.Namespace) -> int:
    from loratune.config import load_config
    from loratune.training.run import train_run

    cfg = load_config(args.config, args.overrides)
    train_run(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from loratune.config import load_config
    from loratune.evaluation.base_vs_lora import evaluate_run
    from loratune.reporting.report import write_report
    from loratune.run_status import phase, write_status
    from loratune.training.run import train_run

    cfg = load_config(args.config, args.overrides)
    result = train_run(cfg, resume=args.resume, overwrite=args.overwrite)
    if not _is_main_process():  # under torchrun, evaluation and the report run once
        return 0
    with phase(result.run_dir, "evaluating"):
        evaluate_run(result.run_dir, limit=args.limit)
        if cfg.eval.progress_rows:
            from loratune.evaluation.over_time import evaluate_progress
            from loratune.reporting.plots import plot_accuracy_vs_time

            progress = evaluate_progress(result.run_dir, rows=cfg.eval.progress_rows)
            print(f"Plot: {plot_accuracy_vs_time(result.run_dir, progress)}")
        md, html = write_report(result.run_dir)
    write_status(result.run_dir, "finished")
    print(f"Report: {md} and {html}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from loratune.pipeline import run_pipeline

    if not _is_main_process():  # the forgetting matrix is evaluated once; stages train on every rank
        raise LoratuneError("loratune pipeline: run it as one process; each stage's training can use torchrun")
    run_pipeline(args.config, args.overrides, overwrite=args.overwrite, limit=args.limit)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from loratune.evaluation.base_vs_lora import evaluate_run
    from loratune.run_dir import has_adapter
    from loratune.run_status import phase, write_status

    run_dir = Path(args.run_dir)
    # The run's status follows an evaluation written into the run, not one sent elsewhere (--output).
    tracked = args.output is None and has_adapter(run_dir)
    with phase(run_dir, "evaluating") if tracked else contextlib.nullcontext():
        evaluate_run(args.run_dir, limit=args.limit, overrides=args.overrides, output_dir=args.output,
                     rescore=args.rescore)
    if tracked:
        write_status(run_dir, "finished")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from loratune.run_dir import require_run_dir
    from loratune.run_status import request_stop, resume_command, run_state

    run_dir = require_run_dir(args.run_dir)
    now = run_state(run_dir)
    if now.state == "evaluating":
        raise LoratuneError(f"{run_dir}: evaluating, which `loratune stop` does not stop; press Ctrl-C where it "
                            f"runs (pid {(now.status or {}).get('pid')})")
    if now.state != "training":
        detail = f": {now.message}" if now.message else ""
        raise LoratuneError(f"{run_dir}: not training (state {now.state}{detail}); nothing to stop")
    request_stop(run_dir)
    print(f"{run_dir}: stop requested. The training stops after its current step with a checkpoint, saves no "
          f"adapter and skips evaluation; continue it with {resume_command(run_dir)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from loratune.reporting.report import write_report

    md, html = write_report(Path(args.run_dir))
    print(f"Report: {md} and {html}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from loratune.reporting.report import compare_runs

    table = compare_runs([Path(p) for p in args.run_dirs])
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n", encoding="utf-8")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from loratune.config import load_config
    from loratune.data import load_splits, tokenize_rows
    from loratune.models.load import load_model
    from loratune.tasks import get_task

    cfg = load_config(args.config, args.overrides)
    task = get_task(cfg.task)
    train_rows, eval_rows = load_splits(cfg.data, task, cfg.train.seed)
    loaded = load_model(cfg.model)
    report = {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        _, stats = tokenize_rows(rows, task, loaded.tokenizer, loaded.model_type, cfg.data)
        report[split] = stats.as_dict()
    print(f"Training data shape: ({report['train']['rows'] - report['train']['dropped']}, 2)")
    print(f"Test data shape: ({report['eval']['rows'] - report['eval']['dropped']}, 2)")
    for split, stats in report.items():
        src, tgt = stats["source_tokens"], stats["target_tokens"]
        print(
            f"{split}: {stats['rows']} rows; source tokens mean {src.get('mean')} p95 {src.get('p95')} max {src.get('max')}; "
            f"target tokens mean {tgt.get('mean')} p95 {tgt.get('p95')} max {tgt.get('max')}; "
            f"{stats['truncated']} truncated, {stats['dropped']} dropped "
            f"(limits {cfg.data.max_source_tokens}/{cfg.data.max_target_tokens}, policy {cfg.data.length_policy})"
        )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from loratune.models.builtin import list_models, pull_model

    if args.action == "pull":
        if not args.name:
            raise LoratuneError("loratune models pull NAME: give a model name (see `loratune models`)")
        path = pull_model(args.name)
        print(f"{args.name}: ready at {path}")
        return 0
    for entry in list_models():
        state = f"pulled: {entry['path']}" if entry["pulled"] else "not pulled (loratune models pull NAME)"
        print(f"{entry['name']:<24} {entry['description']}  [{state}]")
        print(f"{'':<24} licence: {entry['license']}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from loratune.models.lora import merge_adapter

    path = merge_adapter(args.run_dir, args.output, base=args.base)
    print(f"Merged model written to {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from loratune.export.gguf import export_run

    result = export_run(args.run_dir, args.output, fmt=args.format, outtype=args.outtype, base=args.base)
    print(f"Exported {result.tensors} tensors to {result.path}")
    print("Run it with:", *result.commands, sep="\n  ")
    return 0


def cmd_sql_eval(args: argparse.Namespace) -> int:
    from loratune.sql import sql_eval_files

    result = sql_eval_files(
        args.gold, args.pred, db_dir=args.db_dir, num_dbs=args.dbs, per_example_path=args.per_example,
        seed=args.seed, timeout_s=args.timeout,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            shown = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else value)
            print(f"{key:<28} {shown}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from loratune.serve.app import run_server

    run_server(
        base=args.base, adapters=args.adapter, host=args.host, port=args.port,
        api_key=args.api_key or os.environ.get("LORATUNE_API_KEY"), cors=args.cors,
        adapter_roots=args.adapter_root,
    )
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from loratune.serve.terminal_chat import chat_loop

    chat_loop(run_dir=args.run_dir, base=args.base)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from loratune.ui.app import run_ui

    run_ui(args.runs_dir, host=args.host, port=args.port,
           api_key=args.api_key or os.environ.get("LORATUNE_API_KEY"), configs_dir=args.configs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loratune", description="LoRA fine-tuning with evidence.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a LoRA adapter from a config")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("run", help="train, evaluate base vs LoRA, and write the report")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--limit", type=int, default=None, help="evaluate on at most N held-out rows")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("pipeline", help="train stages in order (each continues the last), then the forgetting matrix")
    p.add_argument("config", help="YAML pipeline file: name, output_dir, stages (see configs/pipeline-text2sql.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a run config key in every stage, e.g. --set train.max_steps=20 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="retrain stages whose run directories exist")
    p.add_argument("--limit", type=int, default=None, help="evaluate on at most N rows of each eval set")
    p.set_defaults(handler=cmd_pipeline)

    p = sub.add_parser("eval", help="evaluate a run's adapter against its base model")
    p.add_argument("run_dir")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", default=None, help="write predictions and metrics here instead of the run dir")
    p.add_argument("--rescore", action="store_true",
                   help="judge the saved answers again (e.g. with --set eval.sql.databases=DIR) without generating")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("stop", help="stop a run's training after its current step, with a checkpoint to --resume")
    p.add_argument("run_dir")
    p.set_defaults(handler=cmd_stop)

    p = sub.add_parser("report", help="(re)write report.md, report.html and plots/ for a run")
    p.add_argument("run_dir")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("compare", help="one table of the main metrics across runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--output", default=None)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("data", help="rows, token-length stats, truncated and dropped counts")
    _add_config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_data)

    p = sub.add_parser("models", help="list built-in models, or pull one")
    p.add_argument("action", nargs="?", choices=["list", "pull"], default="list")
    p.add_argument("name", nargs="?")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("merge", help="fold an adapter into its base model and save it")
    p.add_argument("run_dir")
    p.add_argument("--output", required=True)
    p.add_argument("--base", default=None, help="base model (default: the one the adapter was trained on)")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("export", help="write a run as GGUF for llama.cpp / Ollama (merged, or the adapter alone)")
    p.add_argument("run_dir")
    p.add_argument("--format", default="gguf", help="gguf (merged model + Modelfile) or gguf-lora (adapter alone)")
    # Checked by the library, not argparse `choices`, so a bad value is our one-line error.
    p.add_argument("--outtype", default="f16",
                   help="f32, f16, q8_0, or q4_0, q4_k_m, q5_k_m by llama.cpp's quantizer (default f16)")
    p.add_argument("--output", required=True, help="the .gguf file to write")
    p.add_argument("--base", default=None, help="base model (default: the one the adapter was trained on)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("sql-eval", help="judge SQL predictions by execution")
    p.add_argument("--gold", required=True, help="JSONL with context, answer and optional db_id")
    p.add_argument("--pred", required=True, help="one SQL per line, or JSONL with a prediction field")
    p.add_argument("--db-dir", default=None, help="Spider-style databases: DIR/<db_id>/<db_id>.sqlite")
    p.add_argument("--dbs", type=int, default=8, help="synthesized databases per query")
    p.add_argument("--per-example", default=None, help="write per-row verdicts (JSONL) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=2.0, help="per-query time limit in seconds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_sql_eval)

    p = sub.add_parser("serve", help="serve the base model and adapters behind an OpenAI-compatible API")
    p.add_argument("--base", default=None, help="base model (default: the adapters' base)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require this key (or set LORATUNE_API_KEY)")
    p.add_argument("--cors", action="store_true", help="allow cross-origin requests")
    p.add_argument("--adapter-root", action="append", default=[], metavar="DIR",
                   help="let clients load adapters (POST /v1/adapters) from folders under DIR (repeatable; "
                        "default: loading over HTTP is off)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("chat", help="chat in the terminal with a run's adapter or a base model")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--base", default=None)
    p.set_defaults(handler=cmd_chat)

    p = sub.add_parser("ui", help="a dashboard in the browser: runs, live training, answers, compare, chat")
    p.add_argument("--runs-dir", default="runs", help="the folder of run directories (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                                                       "needs --api-key)")
    p.add_argument("--port", type=int, default=7860, help="default 7860")
    p.add_argument("--api-key", default=None, help="require this key on every API request (or set LORATUNE_API_KEY)")
    p.add_argument("--configs", default="configs", help="the folder of configs the Start view offers")
    p.set_defaults(handler=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Library deprecation notices (transformers renaming arguments between versions) are for us,
    # not for users reading a training log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except TrainingStopped as exc:  # asked for, not an error: no "error:" before it
        print(f"loratune {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except LoratuneError as exc:
        print(f"loratune {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"loratune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
