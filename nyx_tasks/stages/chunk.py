"""`chunk` (paper: NyxQA construction): cut each ingested document into
200-token chunks; each image counts as one placeholder token and stays where it
stood; the short tail is dropped (configurable); chunks with more than 5 images
are dropped. Chunk ids derive from document id and token offset, so a re-run
gives identical ids.

rows_in = documents, rows_out = chunks; drops count chunks by reason.
"""

from __future__ import annotations

from nyx_tasks.chunking.chunks import chunk_batch
from nyx_tasks.chunking.tokenizer import load_pretrained, placeholder_id, train_bpe
from nyx_tasks.core.base import ShardSpec
from nyx_tasks.core.log import Progress
from nyx_tasks.runner import ShardOutputs, Stage, StageContext

TOKENIZER_FILE = "tokenizer.json"


class ChunkShard(ShardSpec):
    """One ingest output file."""

    input: str


class ChunkStage(Stage):
    name = "chunk"
    version = 1
    inputs = ("ingest",)
    outputs = {"part": "chunks"}
    execution_only = ("batch_docs",)
    doc = "200-token chunks, images as one placeholder token each, drop chunks with more than 5 images."
    flow = {
        "in": "ingested documents",
        "out": "200-token mixed-modal chunks",
        "drops": "chunks (short tails, too many images); not documents",
    }

    def plan_shards(self, ctx: StageContext) -> list[ChunkShard]:
        ingest = ctx.input_manifest("ingest")
        self._prepare_tokenizer(ctx, [o["path"] for o in ingest["outputs"]["part"]])
        return [{"shard": i, "name": o["path"].rsplit("/", 1)[-1], "input": o["path"]}
                for i, o in enumerate(ingest["outputs"]["part"])]

    def _prepare_tokenizer(self, ctx: StageContext, inputs: list[str]) -> None:
        """Train the demo BPE once per plan (on this partition's documents) and
        store it beside the chunks; a configured HF tokenizer needs nothing here."""
        tcfg = ctx.cfg.chunk.tokenizer
        if tcfg.name_or_path:
            return
        if ctx.store.exists(ctx.rel(TOKENIZER_FILE)):
            # Resuming this attempt (same key, same folder): finished shards were cut with this tokenizer.
            ctx.log.info("chunk: resuming with the tokenizer trained for this plan")
            return

        def texts():
            budget = tcfg.train_max_chars
            for rel in inputs:
                for batch in ctx.store.read_parquet(rel, columns=["texts"]):
                    for texts_ in batch.column("texts").to_pylist():
                        for t in texts_:
                            if t:
                                yield t
                                budget -= len(t)
                        if budget <= 0:
                            return

        tok = train_bpe(texts(), tcfg.train_vocab_size, ctx.cfg.chunk.image_placeholder)
        ctx.store.write_bytes_atomic(ctx.rel(TOKENIZER_FILE), tok.to_str().encode())
        ctx.log.info("chunk: trained a %d-token byte-level BPE on partition %s -> %s",
                     tok.get_vocab_size(), ctx.partition, ctx.store.url(ctx.rel(TOKENIZER_FILE)))

    def load_tokenizer(self, ctx: StageContext):
        from tokenizers import Tokenizer

        tcfg = ctx.cfg.chunk.tokenizer
        if tcfg.name_or_path:
            return load_pretrained(tcfg.name_or_path, ctx.cfg.chunk.image_placeholder)
        with ctx.store.fs.open(ctx.store.path(ctx.rel(TOKENIZER_FILE)), "rb") as f:
            return Tokenizer.from_str(f.read().decode())

    def process(self, ctx: StageContext, shard: ChunkShard, out: ShardOutputs) -> None:
        cfg = ctx.cfg.chunk
        tok = self.load_tokenizer(ctx)
        pid = placeholder_id(tok, cfg.image_placeholder)
        progress = Progress(ctx.log, f"chunk {shard['name']}", unit="docs")
        for batch in ctx.store.read_parquet(shard["input"], columns=["doc_id", "texts", "image_ids"],
                                            batch_size=cfg.batch_docs):
            docs = batch.to_pylist()
            res = chunk_batch(tok, pid, docs, cfg)
            out.rows_in += len(docs)
            for reason, example in res.drops:
                out.drops.drop(reason, example)
            out.extra["docs_without_chunks"] += res.docs_without_chunks
            out.write(res.rows)
            progress.update(len(docs))
        progress.close()

    def finalize(self, ctx: StageContext, manifest: dict) -> None:
        tcfg = ctx.cfg.chunk.tokenizer
        manifest["tokenizer"] = tcfg.name_or_path or ctx.store.url(ctx.rel(TOKENIZER_FILE))
        if not tcfg.name_or_path:
            manifest["tokenizer_sha256"] = ctx.store.sha256(ctx.rel(TOKENIZER_FILE))


STAGE = ChunkStage()

