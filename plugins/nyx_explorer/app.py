"""The explorer's FastAPI app: server-rendered pages over one artifact root.

    /                                  partitions
    /p/<partition>                     every stage's manifest: rows in/out (and what they count), drops by
                                       reason, extra counters
    /p/<partition>/qa                  NyxQA items (filter output): question, images, options, positive
    /p/<partition>/negatives           mined triplets: positive and hard negatives with scores and ranks
    /p/<partition>/feedback            stage-2 feedback windows: the documents shown (text and images),
                                       the VLM's answer and its score per window
    /p/<partition>/drops/<stage>       the stage's drop records (shard, reason, item, source, row, detail,
                                       count), filterable by reason; the reasons with the manifest's counts
    /p/<partition>/evaluation          report.md rendered (tables, plots in a grid), the results table
    /p/<partition>/report/<plot>.png   a plot of the report
    /experiments                       the experiment reports (nyx_experiments): name, base, variants
    /experiments/<name>                an experiment's comparison report.md rendered, its plots
    /experiments/<name>/<plot>.png     a plot of that report
    /search?index=&q=&k=&dim=          search an index `nyx index` built: the top-k documents (text and
                                       images) and scores; POSTed with an image file (multipart), the
                                       query carries that image (a VLM index)
    /images/<aa>/<sha>.<ext>           an image of the root's content-addressed store

Every list reads only the rows of the page it shows (`tables`). Every route requires an Airflow user (`auth.require_explorer_access`). Mounted by the plugin under
/nyx; links are built from the mount's root path, so the app also works behind `[api] base_url`.

A file the explorer will not read (`data.Refused`: a symlink, a hard link, no regular file, over a
size cap, a manifest that is not JSON) or a snapshot that does not match its manifest answers 404
with the path and why, and one log line (`refused`), never a 500; the lists show a broken item on
its row instead, and a report over its cap is named on its page, not rendered.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from nyx_tasks.core.base import StageError
from nyx_tasks.store.artifacts import SnapshotError

from . import data
from .auth import login_redirect, require_explorer_access
from .report_md import render_report

TEMPLATES = Path(__file__).with_name("templates")
PER_PAGE = {"qa": 20, "negatives": 10, "feedback": 10, "drops": 50}
templates = Jinja2Templates(directory=str(TEMPLATES))
router = APIRouter()


def create_app(root: str | None = None) -> FastAPI:
    """The explorer over `root` (a local dir or fsspec URL); None: `data.artifact_root()` per request."""
    app = FastAPI(title="NyxQA explorer", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_explorer_access)])
    app.add_exception_handler(HTTPException, login_redirect)
    app.add_exception_handler(SnapshotError, refused)
    app.state.root = root
    app.include_router(router)
    return app


async def refused(request: Request, exc: SnapshotError) -> JSONResponse:
    """A refused file (`data.Refused`) or a snapshot unlike its manifest: 404 saying which file and
    why, and that as one log line (the message names paths from the root and manifests: escaped)."""
    message = data.one_line(str(exc))
    data.log.warning("refused %s: %s", request.url.path, message)
    return JSONResponse({"detail": message}, status_code=404, headers={"Cache-Control": "no-store"})


def store(request: Request):
    return data.store_for(request.app.state.root or data.artifact_root())


def render(request: Request, name: str, **context) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    return templates.TemplateResponse(request, name, {"base": base, **context},
                                      headers={"Cache-Control": "no-store"})


def plot_response(st, rel: str | None) -> Response:
    """A report's PNG (a regular file of the root, within `data.IMAGE_CAP`), or 404."""
    body = data.read_image(st, rel) if rel else None
    if body is None:
        raise HTTPException(404, "no such plot")
    return Response(body, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


def partition_or_404(st, partition: str) -> str:
    """The partition when it is a folder of the root (a symlinked one is refused: 404, logged)."""
    if not data.partition_exists(st, partition):
        raise HTTPException(404, f"no partition {partition!r} under {st.root}")
    return partition


@router.get("/", response_class=HTMLResponse, name="partitions")
def partitions(request: Request):
    st = store(request)
    try:
        rows, problem = data.partitions(st), ""
    except data.Refused as e:  # partitions/ itself: said on the page, which still shows the rest
        rows, problem = [], data.noted(e)
    return render(request, "partitions.html", root=st.root, partitions=rows, problem=problem)

@router.get("/p/{partition}", response_class=HTMLResponse, name="partition")
def partition(request: Request, partition: str):
    st = store(request)
    partition_or_404(st, partition)
    return render(request, "partition.html", partition=partition, root=st.root,
                  stages=data.stage_summaries(st, partition))

def listing(request: Request, partition: str, stage: str, page: int, filters: dict[str, str]):
    """A page of `stage`'s rows whose columns equal every non-empty filter, with each filter's
    choices: only the page's rows are read (`tables.page_of`)."""
    st = store(request)
    partition_or_404(st, partition)
    context = {"query_token": data.placeholder(st, partition, "filter")} if stage == "filter" else {}
    out = data.output(st, partition, stage)
    template = {"filter": "qa", "mine": "negatives"}[stage]
    shown, choices = (data.page_of(out, page, PER_PAGE[template], filters) if out is not None
                      else (data.paginate([], 1, PER_PAGE[template]), {k: [] for k in filters}))
    return render(request, f"{template}.html", partition=partition, missing=out is None,
                  page=shown, filters=filters, choices=choices,
                  images=data.images(st, partition, data.image_ids_of(shown.items)), segments=data.segments,
                  text_token=data.placeholder(st, partition, "chunk"), **context)


@router.get("/p/{partition}/qa", response_class=HTMLResponse, name="qa")
def qa(request: Request, partition: str, page: int = 1, split: str = "", modality: str = ""):
    return listing(request, partition, "filter", page, {"split": split, "modality": modality})


@router.get("/p/{partition}/negatives", response_class=HTMLResponse, name="negatives")
def negatives(request: Request, partition: str, page: int = 1, source: str = "", split: str = ""):
    return listing(request, partition, "mine", page, {"source": source, "split": split})


@router.get("/p/{partition}/feedback", response_class=HTMLResponse, name="feedback")
def feedback(request: Request, partition: str, page: int = 1, source: str = ""):
    st = store(request)
    partition_or_404(st, partition)
    windows = data.output(st, partition, "feedback", "windows")
    shown, sources = (data.query_page(windows, page, PER_PAGE["feedback"], source) if windows is not None
                      else (data.paginate([], 1, PER_PAGE["feedback"]), []))  # only this page's rows are read below
    by_query: dict[tuple, list] = {k: [] for k in shown.items}
    for w in data.rows_for(windows, shown.items):
        by_query[(w["source"], w["qa_id"])].append(w)
    for ws in by_query.values():
        ws.sort(key=lambda w: w["window"])
    triplets = {(r["source"], r["qa_id"]): r for r in data.rows_for(data.output(st, partition, "mine"), shown.items)}
    chosen = {(r["source"], r["qa_id"]): r for r in data.rows_for(data.output(st, partition, "feedback"), shown.items)}
    wanted: dict[str, set[str]] = {}
    for (src, _), ws in by_query.items():
        wanted.setdefault(src, set()).update(d for w in ws for d in w["doc_ids"])
    documents = data.documents(st, partition, wanted)
    image_ids = data.image_ids_of([*triplets.values(), *documents.values()])
    return render(request, "feedback.html", partition=partition, missing=windows is None,
                  page=replace(shown, items=list(by_query.items())), filters={"source": source},
                  choices={"source": sources}, triplets=triplets, chosen=chosen, documents=documents,
                  images=data.images(st, partition, image_ids), segments=data.segments,
                  query_token=data.placeholder(st, partition, "filter"),
                  text_token=data.placeholder(st, partition, "chunk"),
                  manifest=data.manifest(st, partition, "feedback") or {})


@router.get("/p/{partition}/drops/{stage}", response_class=HTMLResponse, name="drops")
def drops(request: Request, partition: str, stage: str, page: int = 1, reason: str = ""):
    """A stage's drop records (output kind `drops`), a page at a time, filterable by reason."""
    st = store(request)
    partition_or_404(st, partition)
    if stage not in data.STAGE_NAMES:
        raise HTTPException(404, f"no stage {stage!r}")
    m = data.manifest(st, partition, stage)
    out = data.output(st, partition, stage, "drops")
    shown = (data.page_of(out, page, PER_PAGE["drops"], {"reason": reason})[0] if out is not None
             else data.paginate([], 1, PER_PAGE["drops"]))
    counts = sorted(((m or {}).get("drops") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return render(request, "drops.html", partition=partition, stage=stage, missing=m is None,
                  recorded=out is not None, page=shown, filters={"reason": reason}, reasons=counts,
                  dropped=sum(n for _, n in counts), flow=data.stage_flow(stage))


@router.get("/p/{partition}/evaluation", response_class=HTMLResponse, name="evaluation")
def evaluation(request: Request, partition: str):
    st = store(request)
    partition_or_404(st, partition)
    results = data.output(st, partition, "evaluate")  # a row per model, dataset, split, dim, metric: small
    rows = data.read_range(results, 0, results.rows) if results is not None else None
    plots = data.report_plots(st, partition)
    plot_base = f"{request.scope.get('root_path', '').rstrip('/')}/p/{quote(partition, safe='')}/report/"

    def plot_url(name: str) -> str | None:
        return plot_base + quote(name) if name in plots else None

    try:
        text, problem = data.report_text(st, partition), ""
    except data.Refused as e:  # a symlink, over REPORT_CAP: named, not rendered; the results still show
        text, problem = None, data.noted(e)
    report, linked = render_report(text, plot_url) if text is not None else ("", [])
    folder = data.report_dir(st, partition)  # relative to the root; shown where this root has it
    return render(request, "evaluation.html", partition=partition, missing=rows is None,
                  tables=data.results_tables(rows or []), report=report, problem=problem,
                  other_plots=[(p, plot_url(p)) for p in plots if p not in linked],
                  report_url=st.url(f"{folder}/report.md") if folder else "")

@router.get("/p/{partition}/report/{name}", name="report_plot")
def report_plot(request: Request, partition: str, name: str):
    st = store(request)
    partition_or_404(st, partition)
    return plot_response(st, data.report_file(st, partition, name))

@router.get("/experiments", response_class=HTMLResponse, name="experiments")
def experiments(request: Request):
    st = store(request)
    try:
        found, problem = data.experiment_reports(st), ""
    except data.Refused as e:  # reports/experiments/ itself
        found, problem = [], data.noted(e)
    return render(request, "experiments.html", root=st.root, experiments=found, problem=problem)


@router.get("/experiments/{name}", response_class=HTMLResponse, name="experiment")
def experiment(request: Request, name: str):
    st = store(request)
    if data.experiment_dir(st, name) is None:  # a symlinked report.md: Refused, 404 (`refused`)
        raise HTTPException(404, f"no experiment report {name!r} under {st.root}")
    try:
        text, problem = data.experiment_text(st, name), ""
    except data.TooLarge as e:  # named on the page, never read nor rendered
        text, problem = None, data.noted(e)
    plots = data.experiment_plots(st, name)
    plot_base = f"{request.scope.get('root_path', '').rstrip('/')}/experiments/{quote(name, safe='')}/"
    report, _ = render_report(text, lambda p: plot_base + quote(p) if p in plots else None) if text else ("", [])
    return render(request, "experiment.html", experiment=name, report=report, problem=problem,
                  report_url=st.url(f"{data.experiment_dir(st, name)}/report.md"))


@router.get("/experiments/{name}/{plot}", name="experiment_plot")
def experiment_plot(request: Request, name: str, plot: str):
    st = store(request)
    return plot_response(st, data.experiment_file(st, name, plot))


@router.get("/search", response_class=HTMLResponse, name="search")
def search(request: Request, index: str = "", q: str = "", k: int = 10, dim: str = ""):
    """Search an index `nyx index` built (a text query): its top-k documents with their scores."""
    return search_page(request, index, q, k, dim)


@router.post("/search", response_class=HTMLResponse, name="search_with_image")
async def search_with_image(request: Request, index: str = Form(""), q: str = Form(""), k: int = Form(10),
                            dim: str = Form(""), image: UploadFile | None = File(None)):
    """The search form sent with an image file: the query carries it (read up to `data.IMAGE_CAP`
    bytes and fully decoded first; a file that is no image is named on the page)."""
    body = await image.read(data.IMAGE_CAP + 1) if image is not None else b""
    return search_page(request, index, q, k, dim, body, image.filename if image is not None else "")


def search_page(request: Request, index: str, q: str, k: int, dim: str, image: bytes = b"",
                image_name: str = "") -> HTMLResponse:
    st = store(request)
    indexes = data.user_indexes(st)
    hits, problem = [], ""
    k = max(1, min(k, 100))
    if index and (q.strip() or image):
        try:
            hits = data.search(st, index, q, k, int(dim) if dim.strip() else None, image)
        except data.Refused as e:
            problem = data.noted(e)
        except (StageError, ValueError) as e:  # a width the model does not have, a changed index, no image
            problem = data.one_line(str(e))
    return render(request, "search.html", root=st.root, indexes=indexes, index=index or
                  next((i["name"] for i in indexes if not i["broken"]), ""), q=q, k=k, dim=dim, hits=hits,
                  problem=problem, searched=bool(index and (q.strip() or image)), image_name=image_name)


@router.get("/images/{tail:path}", name="image")
def image(request: Request, tail: str):
    rel = data.image_rel(tail)
    body = data.read_image(store(request), rel) if rel else None  # Refused, TooLarge: 404 (`refused`)
    if body is None:
        raise HTTPException(404, "no such image")
    # content-addressed: the bytes under a name never change; private, as it needed a login
    return Response(body, media_type=data.image_media_type(rel),
                    headers={"Cache-Control": "private, max-age=86400, immutable",
                             "X-Content-Type-Options": "nosniff"})
