"""`nyx`: one subcommand per stage, `nyx run` for the whole pipeline without
Airflow, `nyx status` for what the artifact root holds. Heavy imports live in
the command bodies so that `nyx --help` answers at once."""

from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import sys
from dataclasses import dataclass
from typing import Annotated

import typer

from nyx_tasks.airflow_setup import init
from nyx_tasks.core.base import StageError
from nyx_tasks.core.config_rules import (
    ConfigContradiction,
    check_rules,
    hidden_size_rules,
    shared_lines,
)
from nyx_tasks.core.hashing import stable_hash
from nyx_tasks.core.log import drop_table, setup_cli_logging
from nyx_tasks.stages import STAGE_MODULES, STAGE_NAMES, get_stage


class _NyxApp(typer.Typer):
    """Every failure a user can cause ends in one line on stderr and exit 1; `--debug` (anywhere on
    the command line) shows the traceback instead."""

    def __call__(self, *args, **kwargs):
        debug = "--debug" in sys.argv[1:]
        if debug:
            sys.argv.remove("--debug")
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:
            if debug:
                raise
            typer.echo(f"error: {failure_line(e)} (run again with --debug for the traceback)", err=True)
            sys.exit(1)
        finally:
            _ROOT.clear()  # one command's root (commands run in one process too: tests, notebooks)


DEVICE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)
_ROOT: list[str] = []  # the artifact root of this command, once its config is read (for messages)


def failure_line(e: BaseException) -> str:
    """The one line a failed command prints: the StageError's message; for a device that refused a
    write (full, over quota, read-only, failing), what and where, and that a re-run resumes."""
    if isinstance(e, OSError) and e.errno in DEVICE_ERRORS:
        root = _ROOT[-1] if _ROOT else ""
        where = str(e.filename or "") or (f"the artifact root {root}" if root else "the artifact root")
        if root and e.filename and not where.startswith(root):  # a remote root's path lacks its protocol
            where = f"{root} ({where})"
        return (f"{os.strerror(e.errno).lower()} while writing under {where}: free space (or fix the device), "
                "then run the same command again: finished shards and committed stages are kept")
    what = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return what if isinstance(e, StageError) else f"{type(e).__name__}: {what}"


app = _NyxApp(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Nyx pipeline: NyxQA construction and Nyx retriever training (arXiv 2510.17354).")



@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="On a failure, show the traceback instead of one line (anywhere on the line).")] = False) -> None:
    pass  # `--debug` is taken off the command line by _NyxApp before the commands parse it


Profile = Annotated[str, typer.Option("--profile", "-p", help="Profile name in configs/ or a YAML path.")]
Partition = Annotated[str | None, typer.Option("--partition", help="Partition name (default: the profile's).")]
Sets = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. ingest.every_nth=10 (repeatable).")]
Root = Annotated[str | None, typer.Option("--root", help="Artifact root (path or fsspec URL).")]
Force = Annotated[bool, typer.Option("--force", help="Recompute even if complete and unchanged.")]
Wait = Annotated[bool, typer.Option("--wait", help="When another run is writing the stage, wait for it "
                                    "instead of refusing.")]
Verify = Annotated[bool, typer.Option("--verify", help="Check the inputs' sha256 against their manifests too "
                                      "(file list, bytes and rows are always checked).")]


@dataclass(frozen=True)
class ConfigOptions:
    """--profile, --set and --root as one parameter (see _config_options)."""

    profile: str = "demo"
    sets: list[str] | None = None
    root: str | None = None


_CONFIG_OPTIONS = (("profile", Profile, "demo"), ("sets", Sets, None), ("root", Root, None))


def _config_options(command):
    """For a command whose options pass the code-shape limit of 7 parameters: its `config:
    ConfigOptions` parameter is shown to typer (which reads the signature) as the --profile, --set
    and --root options in its place, the same flags and help as every other command's; the command
    gets them back as one ConfigOptions."""
    sig = inspect.signature(command, eval_str=True)
    params = [q for p in sig.parameters.values()
              for q in ([inspect.Parameter(n, p.kind, default=d, annotation=a) for n, a, d in _CONFIG_OPTIONS]
                        if p.name == "config" else [p])]

    @functools.wraps(command)
    def call(**options):
        config = ConfigOptions(*(options.pop(n) for n, _, _ in _CONFIG_OPTIONS))
        return command(**options, config=config)

    call.__signature__ = sig.replace(parameters=params)
    return call


def _config(profile: str, partition: str | None, sets: list[str] | None, root: str | None, force: bool = False):
    from nyx_tasks.core.config import load_config  # pydantic: kept out of `nyx --help`

    overrides: list = list(sets or [])  # --set values are YAML; names and paths are taken verbatim
    if partition:
        overrides.append({"partition": partition})
    if root:
        overrides.append({"artifacts": {"root": root}})
    if force:
        overrides.append({"force": True})
    try:
        cfg = load_config(profile, overrides)
        _ROOT.append(cfg.artifact_root())
        return cfg
    except Exception as e:  # pydantic / YAML / missing profile: one clear line, no traceback
        typer.echo(f"error: invalid configuration: {e}", err=True)
        raise typer.Exit(2) from e


def _run_stages(names: list[str], cfg, wait: bool = False, verify: bool = False) -> list:
    from nyx_tasks.runner import RunOptions, run_stage  # fsspec, pyarrow: kept out of `nyx --help`

    setup_cli_logging()
    results = []
    opts = RunOptions(wait=wait, verify=verify)
    for name in names:
        try:
            results.append(run_stage(get_stage(name), cfg, opts=opts))
        except StageError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from e
    return results


def _stage_command(name: str):
    def command(profile: Profile = "demo", partition: Partition = None, sets: Sets = None,
                root: Root = None, force: Force = False, wait: Wait = False, verify: Verify = False) -> None:
        cfg = _config(profile, partition, sets, root, force)
        (result,) = _run_stages([name], cfg, wait, verify)
        typer.echo(json.dumps(result.summary(), indent=2))

    command.__doc__ = f"Run the `{name}` stage for one partition ({STAGE_MODULES[name]})."
    return command


for _name in STAGE_NAMES:
    app.command(_name)(_stage_command(_name))


@app.command("run")
def run_pipeline(profile: Profile = "demo", partition: Partition = None, sets: Sets = None,
                 root: Root = None, force: Force = False, wait: Wait = False,
                 stages: Annotated[str | None, typer.Option(help="Comma-separated subset, in order.")] = None) -> None:
    """Run the stages in order, in this process, without Airflow."""
    cfg = _config(profile, partition, sets, root, force)
    names = [s.strip() for s in stages.split(",")] if stages else list(STAGE_NAMES)
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        typer.echo(f"error: unknown stage(s) {unknown}; stages: {', '.join(STAGE_NAMES)}", err=True)
        raise typer.Exit(2)
    _run_stages(names, cfg, wait)
    typer.echo(status_text(cfg)[0])


def status_text(cfg, verify: bool = False) -> tuple[str, int]:
    """Each stage's manifest summary, and its snapshot checked against the manifest (missing,
    corrupt, extra and stale files; sha256 with `verify`). Returns (text, number of problems)."""
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: kept out of `nyx --help`
    from nyx_tasks.store.status import stage_status  # fsspec, pyarrow: kept out of `nyx --help`

    store = ArtifactStore(cfg.artifact_root())
    lines = [f"artifacts: {store.root}", f"partition: {cfg.partition}"]
    problems = 0
    for name in STAGE_NAMES:
        m, found = stage_status(store, cfg.partition, name, verify)
        bad = [p for p in found if not p.startswith("stale:")]
        problems += len(bad)
        if m is None:
            lines.append(f"\n[{name}] " + ("not complete" if not found else "manifest unreadable"))
        else:
            lines.append(f"\n[{name}] {m['rows_in']} in -> {m['rows_out']} out   "
                         f"config {m['config_hash']}   {m['timings']['finished_at']}   {m['location']}")
            lines.append(drop_table(m["drops"], m["rows_out"]))
            if m.get("extra"):
                lines.append("  " + ", ".join(f"{k}={v}" for k, v in m["extra"].items()))
        lines += [f"  PROBLEM {p}" for p in bad] + [f"  note {p}" for p in found if p not in bad]
    if problems:
        lines.append(f"\n{problems} problem(s): re-run the stage named with --force to rewrite its snapshot")
    return "\n".join(lines), problems


@app.command("status")
def status(profile: Profile = "demo", partition: Partition = None, sets: Sets = None, root: Root = None,
           verify: Annotated[bool, typer.Option("--verify", help="Also check every file's sha256.")] = False,
           drops: Annotated[str | None, typer.Option("--drops", help="List the items every stage dropped for this "
                                                     "reason (or 'all') instead: stage, item, source, row, detail.")]
           = None) -> None:
    """Print each stage's manifest summary (rows, drop reasons, location) for a partition, and check
    each snapshot against its manifest; exit 1 when a file is missing, corrupt or extra."""
    cfg = _config(profile, partition, sets, root)
    if drops:
        _list_drops(cfg, drops)
        return
    text, problems = status_text(cfg, verify)
    typer.echo(text)
    if problems:
        raise typer.Exit(1)


def _list_drops(cfg, reason: str) -> None:
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: kept out of `nyx --help`
    from nyx_tasks.store.status import dropped  # fsspec, pyarrow: kept out of `nyx --help`

    store = ArtifactStore(cfg.artifact_root())
    n = 0
    for stage in STAGE_NAMES:
        for r in dropped(store, cfg.partition, stage, None if reason == "all" else reason):
            where = f"{r['source'] or '-'}{'#' + str(r['row']) if r['row'] is not None else ''}"
            count = f" (x{r['count']})" if r["count"] != 1 else ""
            typer.echo(f"{stage}\t{r['reason']}\t{r['item'] or '-'}\t{where}\t{r['detail']}{count}")
            n += r["count"]
    typer.echo(f"{n} item(s) dropped for {reason!r} in partition {cfg.partition}", err=True)


@app.command("config")
def show_config(profile: Profile = "demo", partition: Partition = None, sets: Sets = None, root: Root = None,
                check: Annotated[bool, typer.Option("--check", help="Print the cross-field checks (shared settings, "
                                                    "numbers that must fit, Matryoshka dims against the model's "
                                                    "width) instead of the config; exit 2 on a contradiction.")]
                = False) -> None:
    """Print the resolved configuration and each stage's config hash."""
    import yaml

    cfg = _config(profile, partition, sets, root)
    if check:
        _check(cfg)
        return
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    for name in STAGE_NAMES:
        st = get_stage(name)
        h = stable_hash({"stage": name, "version": st.version, "config": st.config_payload(cfg)})
        typer.echo(f"# {name} config_hash: {h}")


def _hidden_size(model: str) -> int | None:
    """The text width of a model's config (tiny models are built on the spot); None when unreadable here."""
    from transformers import AutoConfig

    from nyx_tasks.embedding import resolve_model_path  # numpy, fsspec: kept out of `nyx --help`

    try:
        conf = AutoConfig.from_pretrained(resolve_model_path(model), local_files_only=True)
    except (OSError, ValueError):
        return None
    return getattr(getattr(conf, "text_config", None) or conf, "hidden_size", None)


def _check(cfg) -> None:
    try:
        lines = shared_lines(cfg) + check_rules(cfg) + hidden_size_rules(cfg, _hidden_size)
    except ConfigContradiction as e:
        typer.echo(f"error: invalid configuration: profile {cfg.profile!r}: {e}", err=True)
        raise typer.Exit(2) from e
    skipped = [line for line in lines if line.startswith("not checked")]
    for line in lines:
        typer.echo(f"{'--' if line in skipped else 'ok'}  {line}")
    typer.echo(f"profile {cfg.profile!r}: {len(lines) - len(skipped)} checks hold, {len(skipped)} not checked")


@app.command("remine")
def remine_cmd(profile: Profile = "demo", partition: Partition = None, sets: Sets = None, root: Root = None,
               force: Force = False, wait: Wait = False) -> None:
    """Re-mine hard negatives with the newest checkpoint into a new versioned artifact."""
    from nyx_tasks.runner import RunOptions  # fsspec, pyarrow: kept out of `nyx --help`
    from nyx_tasks.stages.mine import remine  # numpy, fsspec: kept out of `nyx --help`

    setup_cli_logging()
    try:
        result, version, ckpt = remine(_config(profile, partition, sets, root, force), opts=RunOptions(wait=wait))
    except StageError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps({**result.summary(), "version": version, "checkpoint": ckpt}, indent=2))


models_app = typer.Typer(no_args_is_help=True, help="Models: build the tiny offline models.")
app.add_typer(models_app, name="models")


@models_app.command("build-tiny")
def build_tiny_cmd(out_dir: Annotated[str, typer.Argument(help="Where to write the models.")],
                   seed: Annotated[int, typer.Option(help="Weight seed.")] = 0) -> None:
    """Build tiny random-weight Qwen2.5-VL and Qwen2 models (and their tokenizer) offline."""
    from nyx_tasks.models.tiny import build_tiny  # pydantic, fsspec: kept out of `nyx --help`

    typer.echo(json.dumps(build_tiny(out_dir, seed), indent=2))


airflow_app = typer.Typer(no_args_is_help=True, help="Airflow set-up for this project.")
app.add_typer(airflow_app, name="airflow")


@airflow_app.command("init")
def airflow_init_cmd() -> None:
    """Create/update the `gpu` pool (NYX_GPU_SLOTS, default 1) and, when NYX_VLLM_URL is set, the
    `nyx_vllm` connection (key from NYX_VLLM_API_KEY). Idempotent."""
    try:
        typer.echo(json.dumps(init(), indent=2))
    except (RuntimeError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e


lease_app = typer.Typer(no_args_is_help=True, help="Stage leases: which run is writing which stage output.")
app.add_typer(lease_app, name="lease")


@lease_app.command("list")
def lease_list_cmd(profile: Profile = "demo", partition: Partition = None, sets: Sets = None,
                   root: Root = None) -> None:
    """Every stage lease under the root (one partition's with --partition): the stage output, its
    owner (an Airflow run or a CLI process), host, pid, expiry and state (live, expired, process
    gone, unreadable; all but live are taken over by the next writer)."""
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: kept out of `nyx --help`
    from nyx_tasks.store.lease import lease_state, stage_leases  # fsspec: kept out of `nyx --help`

    cfg = _config(profile, partition, sets, root)
    found = stage_leases(ArtifactStore(cfg.artifact_root()), partition)
    for rel, r in found:
        typer.echo(f"{rel}  {r.get('owner')}  host {r.get('host', '?')} pid {r.get('pid', '?')}  "
                   f"until {r.get('expires_at', '?')}  {lease_state(r)}")
    if not found:
        typer.echo(f"no leases under {cfg.artifact_root()}")


@lease_app.command("release")
def lease_release_cmd(stage: Annotated[str, typer.Argument(help="The stage (its output folder).")],
                      profile: Profile = "demo", partition: Partition = None, sets: Sets = None,
                      root: Root = None) -> None:
    """Remove a stage's lease for the partition, whoever holds it: for a run you know is gone (a
    failed Airflow run's lease otherwise blocks the stage until it expires). Prints the record removed."""
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: kept out of `nyx --help`
    from nyx_tasks.store.lease import Lease, lease_state  # fsspec: kept out of `nyx --help`

    cfg = _config(profile, partition, sets, root)
    store = ArtifactStore(cfg.artifact_root())
    lease = Lease(store, ArtifactStore.stage_rel(cfg.partition, stage), "?")
    record = lease.read()
    if record is None:
        typer.echo(f"no lease on {stage} of partition {cfg.partition} under {cfg.artifact_root()}")
        return
    store.remove(lease.path_rel)
    typer.echo(f"released {store.url(lease.path_rel)}: {record.get('owner')} (host {record.get('host', '?')}, "
               f"pid {record.get('pid', '?')}, {lease_state(record)})")


@app.command("gc")
def gc_cmd(profile: Profile = "demo", sets: Sets = None, root: Root = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
           min_age: Annotated[float, typer.Option("--min-age", help="Seconds without a change before a leftover "
                                                   "counts as abandoned (default: a lease's lifetime).")] = 600.0) -> None:
    """Leftovers of killed or failed writers under the root: temporary files, corpus table builds no
    manifest names, attempt folders neither committed nor planned. Never a committed snapshot."""
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: kept out of `nyx --help`
    from nyx_tasks.store.gc import leftovers, remove  # fsspec: likewise

    cfg = _config(profile, None, sets, root)
    store = ArtifactStore(cfg.artifact_root())
    found = leftovers(store, min_age)
    for item in found:
        typer.echo(f"{item.kind:12s} {item.bytes:>12,d}  {item.rel}")
    total = sum(i.bytes for i in found)
    if dry_run or not found:
        typer.echo(f"{len(found)} leftover(s), {total:,d} bytes under {cfg.artifact_root()}"
                   + (" (dry run: nothing removed)" if dry_run and found else ""))
        return
    typer.echo(f"removed {len(found)} leftover(s), {remove(store, found):,d} bytes under {cfg.artifact_root()}")


@app.command("index")
def index_cmd(name: Annotated[str, typer.Argument(help="The index's name (indexes/<name>/ under the root).")],
              inputs: Annotated[list[str], typer.Argument(help="Parquet / JSONL files of documents (globs, URLs).")],
              model: Annotated[str, typer.Option("--model", help="A folder `nyx export model` wrote.")],
              columns: Annotated[str, typer.Option(
                  "--columns", help="ID,TEXT[,IMAGES]: the id and text columns, and a column of image paths or "
                  "URLs (a list per document; a VLM retriever).")] = "id,text",
              server: Annotated[str | None, typer.Option(
                  "--server", help="The /v1 URL of `vllm serve MODEL` (the README's flags): the server embeds, "
                  "here and in every search of this index.")] = None,
              profile: Profile = "demo", sets: Sets = None, root: Root = None) -> None:
    """Embed your own documents with a trained retriever into a searchable index (resumable: a rerun
    embeds only what is missing). Spelled special tokens stay text; images are fetched as ingest
    fetches them (the profile's ingest.fetch, plus the documents' own folders)."""
    from nyx_tasks.retrieval import user_index  # torch: kept out of `nyx --help`
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: likewise

    setup_cli_logging()
    cfg = _config(profile, None, sets, root)
    record = user_index.build_index(ArtifactStore(cfg.artifact_root()), name, model, list(inputs),
                                    user_index.Columns.parse(columns), cfg.ingest.fetch, server=server)
    typer.echo(json.dumps(record, indent=2))


@app.command("search")
def search_cmd(query: Annotated[str, typer.Argument(help="What to look for.")],
               index: Annotated[str, typer.Option("--index", help="An index `nyx index` built.")],
               k: Annotated[int, typer.Option("-k", help="How many documents.")] = 10,
               dim: Annotated[int | None, typer.Option("--dim", help="A Matryoshka width (default: full).")] = None,
               image: Annotated[list[str] | None, typer.Option(
                   "--image", help="An image file the query carries (repeatable; a VLM index).")] = None,
               profile: Profile = "demo", root: Root = None) -> None:
    """The top-k documents of an index for a query: rank, score, id, the text's start and the
    document's images (paths under the root)."""
    from nyx_tasks.retrieval.user_index import search_index  # torch: kept out of `nyx --help`
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: likewise

    cfg = _config(profile, None, None, root)
    for hit in search_index(ArtifactStore(cfg.artifact_root()), index, [query], k, dim, images=image or ())[0]:
        text = " ".join(hit.text.split())
        pics = f"  [{', '.join(hit.images)}]" if hit.images else ""
        typer.echo(f"{hit.rank:>3}  {hit.score:.4f}  {hit.doc_id}  {text[:100]}{'...' if len(text) > 100 else ''}"
                   f"{pics}")


export_app = typer.Typer(no_args_is_help=True, help="Export datasets for publishing.")
app.add_typer(export_app, name="export")


@export_app.command("nyxqa")
def export_nyxqa_cmd(out_dir: Annotated[str, typer.Argument(help="Output folder (local path or fsspec URL).")],
                     profile: Profile = "demo", partition: Partition = None, sets: Sets = None,
                     root: Root = None) -> None:
    """Write NyxQA in the HF-datasets Parquet layout (data/{train,validation,test}-00000-of-00001.parquet), images embedded."""
    from nyx_tasks.export import export_nyxqa  # fsspec, pyarrow: kept out of `nyx --help`

    cfg = _config(profile, partition, sets, root)
    typer.echo(json.dumps(export_nyxqa(cfg, out_dir), indent=2))


@export_app.command("model")
def export_model_cmd(to: Annotated[str, typer.Option("--to", help="A new (or empty) local folder.")],
                     stage: Annotated[str, typer.Option("--stage", help="train_stage1 or train_stage2.")] = "train_stage1",
                     profile: Profile = "demo", partition: Partition = None, sets: Sets = None,
                     root: Root = None) -> None:
    """Write a trained retriever as a folder that carries its recipe (weights, tokenizer, nyx_model.json,
    a model card): an encoder's loads with SentenceTransformer(DIR), any with nyx_tasks.embedding.load(DIR)."""
    from nyx_tasks.export import export_model, serve_command  # fsspec, pyarrow: not in --help

    cfg = _config(profile, partition, sets, root)
    typer.echo(json.dumps(export_model(cfg, stage, to), indent=2))
    typer.echo(f"serve it: {serve_command(to)}", err=True)


import_app = typer.Typer(no_args_is_help=True,
                         help="Import public training sets into the triplet schema (<root>/datasets/<name>/), "
                              "evaluation benchmarks into <root>/benchmarks/<name>/.")
app.add_typer(import_app, name="import")

ImportSources = Annotated[list[str], typer.Argument(help="Parquet or JSONL files (globs and fsspec URLs allowed).")]
ImportName = Annotated[str, typer.Option("--name", help="Dataset name; a train source reads it with kind=dataset.")]
ImageRoots = Annotated[list[str] | None, typer.Option(
    "--image-root", help="Folder the image paths are relative to (repeatable: the first that has the file wins).")]
Placeholder = Annotated[str | None, typer.Option(
    "--placeholder", help="Image placeholder written into the texts (default: chunk.image_placeholder).")]


def _import(layout: str, sources: list[str], name: str, image_roots: list[str] | None, profile: str,
            sets: list[str] | None, root: str | None, placeholder: str | None) -> None:
    from nyx_tasks.sources.importers import (  # fsspec, pyarrow: kept out of `nyx --help`
        ImportFailed,
        import_dataset,
    )
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: kept out of `nyx --help`

    cfg = _config(profile, None, sets, root)
    setup_cli_logging()
    try:
        manifest = import_dataset(layout, sources, name, ArtifactStore(cfg.artifact_root()), image_roots or [],
                                  placeholder or cfg.chunk.image_placeholder, cfg.ingest.fetch)
    except (ImportFailed, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps({k: manifest[k] for k in ("dataset", "layout", "rows_in", "rows_out", "drops", "images",
                                                    "location")}, indent=2))


@import_app.command("mmeb")
def import_mmeb_cmd(sources: ImportSources, name: ImportName, image_root: ImageRoots = None,
                    profile: Profile = "demo", sets: Sets = None, root: Root = None,
                    placeholder: Placeholder = None) -> None:
    """Import TIGER-Lab/MMEB-train files (qry / pos_text / neg_text, <|image_1|>, an images folder)."""
    _import("mmeb", sources, name, image_root, profile, sets, root, placeholder)


@import_app.command("mme5")
def import_mme5_cmd(sources: ImportSources, name: ImportName, image_root: ImageRoots = None,
                    profile: Profile = "demo", sets: Sets = None, root: Root = None,
                    placeholder: Placeholder = None) -> None:
    """Import intfloat/mmE5-synthetic files (MMEB's columns, lists as Python-literal strings)."""
    _import("mme5", sources, name, image_root, profile, sets, root, placeholder)


def _import_benchmark(layout: str, name: str, profile: str, sets: list[str] | None, root: str | None,
                      placeholder: str | None, **files) -> None:
    from nyx_tasks.sources.importers_eval import (  # fsspec, pyarrow: kept out of `nyx --help`
        BenchmarkFiles,
        ImportFailed,
        import_benchmark,
    )
    from nyx_tasks.store.artifacts import ArtifactStore  # fsspec: kept out of `nyx --help`

    cfg = _config(profile, None, sets, root)
    setup_cli_logging()
    try:
        manifest = import_benchmark(layout, name, ArtifactStore(cfg.artifact_root()), BenchmarkFiles(**files),
                                    placeholder=placeholder or cfg.chunk.image_placeholder, fetch=cfg.ingest.fetch)
    except (ImportFailed, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps({k: manifest.get(k) for k in ("dataset", "layout", "benchmark", "rows_in", "rows_out",
                                                        "drops", "corpus_docs", "location")}, indent=2))


@import_app.command("mmqa")
@_config_options
def import_mmqa_cmd(folder: Annotated[str, typer.Argument(help="Folder holding MMQA_<split>.jsonl and MMQA_texts / "
                                                               "_tables / _images.jsonl (.gz too; any prefix).")],
                    name: ImportName, image_root: ImageRoots = None,
                    split: Annotated[str, typer.Option("--split", help="Questions file: MMQA_<split>.jsonl.")] = "dev",
                    config: ConfigOptions = ConfigOptions(), placeholder: Placeholder = None) -> None:
    """Import MultiModalQA (questions, answers, supporting docs; one corpus of texts, tables, images) for evaluate."""
    base = folder.rstrip("/")
    files = {k: [f"{base}/*MMQA_{part}.jsonl*"]  # .jsonl, or .jsonl.gz as the repository ships them
             for k, part in (("questions", split), ("texts", "texts"), ("tables", "tables"), ("image_lists", "images"))}
    _import_benchmark("mmqa", name, config.profile, config.sets, config.root, placeholder, **files,
                      image_roots=image_root or [f"{base}/final_dataset_images"])


@import_app.command("mmeb-eval")
def import_mmeb_eval_cmd(sources: ImportSources, name: ImportName, image_root: ImageRoots = None,
                         profile: Profile = "demo", sets: Sets = None, root: Root = None,
                         placeholder: Placeholder = None) -> None:
    """Import TIGER-Lab/MMEB-eval subsets (<subset>/test-*.parquet; qry_text, tgt_text, the positive first)."""
    _import_benchmark("mmeb-eval", name, profile, sets, root, placeholder, sources=sources,
                      image_roots=image_root or [])


@import_app.command("flashrag")
def import_flashrag_cmd(questions: Annotated[list[str], typer.Argument(
                            help="FlashRAG <set>/dev.jsonl or test.jsonl (id, question, golden_answers).")],
                        name: ImportName,
                        corpus: Annotated[list[str] | None, typer.Option(
                            "--corpus", help="The retrieval corpus (id, contents), e.g. wiki18_100w.jsonl; "
                                             "named, not copied.")] = None,
                        profile: Profile = "demo", sets: Sets = None, root: Root = None) -> None:
    """Import a FlashRAG question set (Bamboogle, HotpotQA, 2Wiki, MuSiQue): a validated copy evaluate reads."""
    _import_benchmark("flashrag", name, profile, sets, root, None, questions=questions, corpus=corpus or [])


def main() -> None:  # pragma: no cover
    sys.exit(app())
