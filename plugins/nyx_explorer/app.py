"""The explorer's FastAPI app: server-rendered pages over one artifact root.

    /                                  partitions
    /p/<partition>                     every stage's manifest: rows in/out (and what they count), drops by
                                       reason, extra counters
    /p/<partition>/qa                  NyxQA items (filter output): question, images, options, positive
    /p/<partition>/negatives           mined triplets: positive and hard negatives with scores and ranks
    /p/<partition>/feedback            stage-2 feedback windows: the documents shown (text and images),
                                       the VLM's answer and its score per window
    /p/<partition>/evaluation          report.md rendered (tables, plots in a grid), the results table
    /p/<partition>/report/<plot>.png   a plot of the report
    /images/<aa>/<sha>.<ext>           an image of the root's content-addressed store

Every route requires an Airflow user (`auth.require_explorer_access`). Mounted by the plugin under
/nyx; links are built from the mount's root path, so the app also works behind `[api] base_url`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from . import data
from .auth import login_redirect, require_explorer_access
from .report_md import render_report

TEMPLATES = Path(__file__).with_name("templates")
PER_PAGE = {"qa": 20, "negatives": 10, "feedback": 10}
templates = Jinja2Templates(directory=str(TEMPLATES))
router = APIRouter()


def create_app(root: str | None = None) -> FastAPI:
    """The explorer over `root` (a local dir or fsspec URL); None: `data.artifact_root()` per request."""
    app = FastAPI(title="NyxQA explorer", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_explorer_access)])
    app.add_exception_handler(HTTPException, login_redirect)
    app.state.root = root
    app.include_router(router)
    return app


def store(request: Request):
    return data.store_for(request.app.state.root or data.artifact_root())


def render(request: Request, name: str, **context) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    return templates.TemplateResponse(request, name, {"base": base, **context},
                                      headers={"Cache-Control": "no-store"})


def partition_or_404(st, partition: str) -> str:
    if not data.PARTITION_RE.match(partition) or not st.exists(f"partitions/{partition}"):
        raise HTTPException(404, f"no partition {partition!r} under {st.root}")
    return partition


@router.get("/", response_class=HTMLResponse, name="partitions")
def partitions(request: Request):
    st = store(request)
    return render(request, "partitions.html", root=st.root, partitions=data.partitions(st))

@router.get("/p/{partition}", response_class=HTMLResponse, name="partition")
def partition(request: Request, partition: str):
    st = store(request)
    partition_or_404(st, partition)
    return render(request, "partition.html", partition=partition, root=st.root,
                  stages=data.stage_summaries(st, partition))

def listing(request: Request, partition: str, stage: str, page: int, filters: dict[str, str]):
    """A page of `stage`'s rows whose columns equal every non-empty filter, with each filter's choices."""
    st = store(request)
    partition_or_404(st, partition)
    context = {"query_token": data.placeholder(st, partition, "filter")} if stage == "filter" else {}
    rows = data.stage_rows(st, partition, stage)
    items = [r for r in rows or [] if all(not v or r[k] == v for k, v in filters.items())]
    template = {"filter": "qa", "mine": "negatives"}[stage]
    return render(request, f"{template}.html", partition=partition, missing=rows is None,
                  page=data.paginate(items, page, PER_PAGE[template]), filters=filters,
                  choices={k: sorted({r[k] for r in rows or []}) for k in filters},
                  images=data.images(st, partition), segments=data.segments,
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
    windows = data.stage_rows(st, partition, "feedback", kind="windows")
    queries: dict[tuple, list] = {}
    for w in windows or []:
        if not source or w["source"] == source:
            queries.setdefault((w["source"], w["qa_id"]), []).append(w)
    for ws in queries.values():
        ws.sort(key=lambda w: w["window"])
    triplets = {(r["source"], r["qa_id"]): r for r in data.stage_rows(st, partition, "mine") or []}
    chosen = {(r["source"], r["qa_id"]): r for r in data.stage_rows(st, partition, "feedback") or []}
    shown = data.paginate(list(queries.items()), page, PER_PAGE["feedback"])
    wanted: dict[str, set[str]] = {}
    for (src, _), ws in shown.items:  # only this page's documents are looked up
        wanted.setdefault(src, set()).update(d for w in ws for d in w["doc_ids"])
    return render(request, "feedback.html", partition=partition, missing=windows is None,
                  page=shown, filters={"source": source},
                  choices={"source": sorted({w["source"] for w in windows or []})},
                  triplets=triplets, chosen=chosen, documents=data.documents(st, partition, wanted),
                  images=data.images(st, partition), segments=data.segments,
                  query_token=data.placeholder(st, partition, "filter"),
                  text_token=data.placeholder(st, partition, "chunk"),
                  manifest=data.manifest(st, partition, "feedback") or {})

@router.get("/p/{partition}/evaluation", response_class=HTMLResponse, name="evaluation")
def evaluation(request: Request, partition: str):
    st = store(request)
    partition_or_404(st, partition)
    rows = data.stage_rows(st, partition, "evaluate")
    plots = data.report_plots(st, partition)
    plot_base = f"{request.scope.get('root_path', '').rstrip('/')}/p/{quote(partition, safe='')}/report/"

    def plot_url(name: str) -> str | None:
        return plot_base + quote(name) if name in plots else None

    text = data.report_text(st, partition)
    report, linked = render_report(text, plot_url) if text is not None else ("", [])
    folder = data.report_dir(st, partition)  # relative to the root; shown where this root has it
    return render(request, "evaluation.html", partition=partition, missing=rows is None,
                  tables=data.results_tables(rows or []), report=report,
                  other_plots=[(p, plot_url(p)) for p in plots if p not in linked],
                  report_url=st.url(f"{folder}/report.md") if folder else "")

@router.get("/p/{partition}/report/{name}", name="report_plot")
def report_plot(request: Request, partition: str, name: str):
    st = store(request)
    partition_or_404(st, partition)
    rel = data.report_file(st, partition, name)
    body = data.read_regular(st, rel) if rel else None
    if body is None:
        raise HTTPException(404, "no such plot")
    return Response(body, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})

@router.get("/images/{tail:path}", name="image")
def image(request: Request, tail: str):
    rel = data.image_rel(tail)
    body = data.read_image(store(request), rel) if rel else None
    if body is None:
        raise HTTPException(404, "no such image")
    # content-addressed: the bytes under a name never change; private, as it needed a login
    return Response(body, media_type=data.image_media_type(rel),
                    headers={"Cache-Control": "private, max-age=86400, immutable",
                             "X-Content-Type-Options": "nosniff"})
