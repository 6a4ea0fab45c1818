"""`ifedit bench`: run a benchmark resumably (here or on Ray), score it, and report it beside the paper's numbers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InvalidInputError
from ..presets import resolve_model
from .options import (
    EXIT_CASES_FAILED,
    EXIT_INPUT,
    EXIT_SETUP,
    Parser,
    add_model_and_sampling_arguments,
    add_prompt_arguments,
    check_seed_option,
    edit_settings_of,
    load_options,
    prompt_options,
    quiet_libraries,
    with_lora_options,
)

logger = logging.getLogger("ifedit")


def register(commands) -> None:
    from ..bench.benchmarks import BENCHMARKS
    from ..bench.published import JUDGE_MODEL

    bench = commands.add_parser(
        "bench",
        help="run, score and report TEdBench, ByteMorph-Bench, RISEBench and ImgEdit-Bench",
        description="Benchmark runs that survive interruptions and spread over every GPU (with Ray): outputs in "
        "the layout each benchmark's own scorer reads, a record per case, scores and a report.",
    )
    actions = bench.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    run = actions.add_parser(
        "run",
        help="edit every case of a benchmark (a rerun continues where the last one stopped)",
        description="Write the video prompt of every case first, then edit them into OUT in the layout the "
        "benchmark's scorer reads. Finished cases are skipped on a rerun; failed and partial ones are redone.",
        epilog="example: ifedit bench run --benchmark tedbench --data tedbench/ --out runs/tedbench --ray. Exit "
        f"status: 0 when every case finished, {EXIT_CASES_FAILED} when some failed (their errors are in "
        f"OUT/failures; a rerun retries them), {EXIT_INPUT} for bad input, {EXIT_SETUP} for a setup problem.",
    )
    run.add_argument("--benchmark", required=True, choices=tuple(BENCHMARKS), help="which benchmark --data holds")
    run.add_argument("--data", required=True, help="your copy of the benchmark, in its official format")
    run.add_argument("--out", required=True, help="run folder (created; an existing run in it is continued)")
    run.add_argument("--limit", type=int, help="only the first N cases (after --categories)")
    run.add_argument("--categories", help="comma-separated categories or edit types to run, e.g. causal_reasoning")
    run.add_argument(
        "--allow-outside-data",
        action="store_true",
        help="let the listing name images outside --data (after following links); refused by default, so a "
        "downloaded listing cannot send other files of this machine to a prompt server or into a report",
    )
    run.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="edit on Ray: alone, a local cluster on this machine; with ADDRESS (e.g. auto or "
        "ray://head:10001), join that cluster. One worker per GPU, or CPU workers without GPUs",
    )
    run.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, else one per CPU core)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes")
    prompt = add_prompt_arguments(run, input_kind=False)
    prompt.add_argument("--negative-prompt", help="what to avoid (only used when guidance is above 1)")
    add_model_and_sampling_arguments(
        run, seed_help="run seed; each case's seed derives from it and its id (default: 0)"
    )
    run.set_defaults(func=_run)

    score = actions.add_parser(
        "score",
        help="score a run: TEdBench metrics, sharpness, and the benchmarks' official judges",
        description="Laplacian sharpness of every output; for TEdBench LPIPS, CLIP-I and CLIP-T; for ByteMorph, "
        "RISEBench and ImgEdit the official scorer from your checkout of its repository, with your judge "
        "endpoint. Writes DIR/scores.json.",
    )
    score.add_argument("dir", help="a run folder written by `ifedit bench run`")
    score.add_argument("--clip", metavar="MODEL", help="CLIP for CLIP-I/CLIP-T: a folder or Hub id, e.g. "
                       "openai/clip-vit-large-patch14")  # fmt: skip
    score.add_argument(
        "--lpips-alexnet", metavar="FILE", help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth)"
    )
    score.add_argument("--lpips-heads", metavar="FILE", help="LPIPS linear heads (alex.pth of the lpips package)")
    score.add_argument("--device", default="auto", help="where metrics run: auto, cpu, cuda, cuda:N")
    score.add_argument("--scorer-repo", metavar="DIR", help="your checkout of the benchmark's official repository")
    score.add_argument(
        "--scorer-python",
        default=sys.executable,
        metavar="PATH",
        help="the Python with the official scorer's requirements (default: this one)",
    )
    score.add_argument(
        "--judge-base-url", metavar="URL", help="OpenAI-compatible judge (default $IFEDIT_JUDGE_BASE_URL)"
    )
    score.add_argument(
        "--judge-model",
        metavar="NAME",
        help=f"judge model, sent to every scorer and recorded (default $IFEDIT_JUDGE_MODEL, else {JUDGE_MODEL}: "
        "RISEBench's own choice and the paper's judge for RISEBench and ImgEdit; left alone, ImgEdit's script asks "
        "for gpt-4o and ByteMorph's for its Azure deployment, and the paper's ByteMorph numbers used Claude 3.7)",
    )
    score.add_argument("--judge-api-key", metavar="KEY", help="judge key (prefer $IFEDIT_JUDGE_API_KEY)")
    score.add_argument("-q", "--quiet", action="store_true", help="no notes")
    score.set_defaults(func=_score)

    report = actions.add_parser(
        "report",
        help="a Markdown table and an HTML page of a scored run, beside the paper's numbers",
        description="Write DIR/report.md and DIR/report.html: per-case thumbnails and scores, per-category and "
        "overall numbers, and the paper's published numbers for the benchmark.",
    )
    report.add_argument("dir", help="a run folder (scored with `ifedit bench score` for numbers)")
    report.add_argument("-q", "--quiet", action="store_true", help="no notes")
    report.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from ..bench.report import write_report

    for path in write_report(Path(args.dir)):
        logger.info("wrote %s", path)
    return 0


def _score(args: argparse.Namespace) -> int:
    quiet_libraries()
    from ..bench.scoring import ScoreOptions, score_run

    options = ScoreOptions(
        clip=args.clip,
        lpips_alexnet=args.lpips_alexnet,
        lpips_heads=args.lpips_heads,
        device=args.device,
        scorer_repo=args.scorer_repo,
        scorer_python=args.scorer_python,
        judge_base_url=args.judge_base_url,
        judge_model=args.judge_model,
        judge_api_key=args.judge_api_key,
    )
    path = score_run(Path(args.dir), options)
    logger.info("wrote %s", path)
    return 0


def _run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from ..bench.runner import RunPlan, run

    if args.ray is not None:
        from ..bench.distributed import import_ray

        import_ray()
    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise InvalidInputError(f"--limit must be at least 1, got {args.limit}")
    check_seed_option(args.seed)
    preset = with_lora_options(resolve_model(args.model), args)
    settings = edit_settings_of(preset, args)
    plan = RunPlan(
        benchmark=args.benchmark,
        data=Path(args.data).expanduser().resolve(),
        out=Path(args.out),
        preset=preset,
        load_options=load_options(args),
        settings=settings,
        prompts=prompt_options(args),
        seed=0 if args.seed is None else args.seed,
        limit=args.limit,
        categories=tuple(name.strip() for name in (args.categories or "").split(",") if name.strip()),
        argv=tuple(args.argv),
        allow_outside_data=args.allow_outside_data,
    )
    from ..loading import check_placement

    check_placement(preset, plan.load_options, ahead=args.ray is None)  # Ray workers check on their own machines
    summary = run(
        plan,
        ray_address=args.ray or None,
        use_ray=args.ray is not None,
        workers=args.workers,
        progress_bar=not args.quiet,
    )
    logger.info(
        "%s: %d cases, %d already done, %d edited, %d failed; outputs in %s",
        args.benchmark,
        summary.total,
        summary.skipped,
        summary.finished,
        len(summary.failed),
        summary.folder / "images",
    )
    if summary.failed:
        first_id, first_error = next(iter(summary.failed.items()))
        print(
            f"ifedit: error: {len(summary.failed)} cases failed (first: {first_id}: {first_error}); "
            f"records in {summary.folder / 'failures'}; a rerun retries them",
            file=sys.stderr,
        )
        return EXIT_CASES_FAILED
    return 0
