"""`decision-service items ...` (the catalog) and `decision-service retriever ...` (train,
check, promote, reject): commands over the database, no server needed."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson
import typer

from decision_service.settings import get_settings

items = typer.Typer(help="The item catalog of a loop (retrieval).", no_args_is_help=True)
retriever = typer.Typer(
    help="Two-tower retrievers: train, check (the retriever gate), rollout (shadow, canary), "
    "promote, reject, rollback.",
    no_args_is_help=True,
)
MAX_BATCH = 1000


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    """Objects {id, features?, created_at?, embedding?} from Parquet (one column per field;
    `features` a struct or a JSON string) or JSON lines."""
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=MAX_BATCH):
            for row in batch.to_pylist():
                if isinstance(row.get("features"), str):
                    row["features"] = orjson.loads(row["features"])
                created = row.get("created_at")
                if isinstance(created, datetime):
                    row["created_at"] = created.isoformat()
                yield row
        return
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                row = orjson.loads(line)
                if not isinstance(row, dict):
                    raise typer.BadParameter(f"line {n} is not a JSON object")
                yield row


def _count(path: Path) -> int | None:
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


@items.command("load")
def load(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Parquet or JSONL."),
    loop: str = typer.Option(..., "--loop", help="The loop whose catalog receives the items."),
    batch: int = typer.Option(MAX_BATCH, min=1, max=MAX_BATCH, help="Items per transaction."),
) -> None:
    """Upsert every item of FILE, `batch` per transaction, with a progress bar. Each batch is
    validated like a PUT /v1/loops/{loop}/items (and embedded by the live item tower)."""
    from tqdm import tqdm

    from decision_service.retrieval import RetrievalRegistry
    from decision_service.routes_catalog import validate_items
    from explore.errors import DomainError
    from log.loops import get_loop
    from log.schema import make_engine, migrate

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        if get_loop(engine, loop) is None:
            raise typer.BadParameter(f"loop {loop!r} does not exist", param_hint="--loop")
        registry = RetrievalRegistry(engine)
        total = inserted = embedded = 0
        pending: list[dict[str, Any]] = []
        with tqdm(total=_count(file), unit="item", desc=f"items -> {loop}") as bar:

            def flush() -> None:
                nonlocal total, inserted, embedded
                try:
                    parsed = validate_items({"items": pending}, settings)
                    new, emb = registry.upsert(loop, parsed)
                except DomainError as err:
                    first = total + 1
                    last = first + len(pending) - 1
                    raise typer.BadParameter(f"items {first}-{last}: {err}") from None
                total, inserted, embedded = total + len(pending), inserted + new, embedded + emb
                bar.update(len(pending))
                pending.clear()

            for row in _rows(file):
                pending.append(row)
                if len(pending) >= batch:
                    flush()
            if pending:
                flush()
    finally:
        engine.dispose()
    typer.echo(
        orjson.dumps(
            {"loop": loop, "upserted": total, "inserted": inserted, "embedded": embedded}
        ).decode()
    )


@retriever.command("train")
def train(
    loop: str = typer.Option(..., "--loop"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda:N)."),
    epochs: int = typer.Option(30, min=1, max=1000),
    batch_size: int = typer.Option(2048, min=1, max=1 << 20),
    dim: int = typer.Option(32, min=2, max=256, help="Embedding size."),
    promote: bool = typer.Option(
        False, "--promote", help="Check it with the retriever gate and make it live if it passes."
    ),
) -> None:
    """Train a two-tower retriever on the loop's joined decisions and register it as a
    candidate (kind retriever) with its validation metrics."""
    from decision_service.retrieval import RetrievalRegistry
    from deploy.retriever_gate import check_retriever
    from learn.retriever_train import (
        RetrieverTrainConfig,
        examples_from_joined,
        train_two_tower,
    )
    from log.retrievers import register_retriever
    from log.schema import make_engine, migrate
    from log.training_reads import iter_joined
    from policies.two_tower import TwoTowerConfig, save_two_tower

    if not (device == "cpu" or device.startswith("cuda")):
        raise typer.BadParameter("cpu or cuda", param_hint="--device")
    engine = make_engine(get_settings().database_url)
    try:
        migrate(engine)
        config = RetrieverTrainConfig(
            epochs=epochs, batch_size=batch_size, device=device, tower=TwoTowerConfig(dim=dim)
        )
        examples = examples_from_joined(
            iter_joined(engine, loop, order="decided"), config.tower.buckets
        )
        result = train_two_tower(examples, config)
        metrics = {k: v for k, v in result.metrics.items() if k != "history"}
        record = register_retriever(
            engine, loop, save_two_tower(result.model), metrics, datetime.now(UTC)
        )
        verdict = None
        if promote:
            verdict = check_retriever(engine, loop, record.version)
            if verdict.passed:
                RetrievalRegistry(engine).promote(loop, record.version, _actor())
    finally:
        engine.dispose()
    out = {"version": record.version, **metrics}
    if verdict is not None:
        out["verdict"] = {"decision": verdict.decision, "reason": verdict.reason}
    typer.echo(orjson.dumps(out).decode())


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _fail(err: Exception) -> NoReturn:
    code = getattr(err, "code", "invalid_request")
    typer.echo(f"error ({code}): {getattr(err, 'message', str(err))}", err=True)
    raise typer.Exit(1)


@retriever.command("check")
def check_cmd(
    version: str = typer.Argument(...),
    loop: str = typer.Option(..., "--loop"),
    k: int = typer.Option(50, "--k", min=1, max=10_000, help="recall@k's k."),
) -> None:
    """Run the retriever gate on a candidate now (recall@k and AUC against the live retriever,
    or popularity, on events after its training data); prints the stored verdict."""
    from deploy.retriever_gate import check_retriever
    from explore.errors import DomainError
    from log.schema import make_engine

    engine = make_engine(get_settings().database_url)
    try:
        verdict = check_retriever(engine, loop, version, k=k)
    except DomainError as err:
        _fail(err)
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(verdict.to_json()).decode())


@retriever.command("reject")
def reject_cmd(
    version: str = typer.Argument(...),
    loop: str = typer.Option(..., "--loop"),
    reason: str = typer.Option(..., "--reason", help="Why (audited)."),
) -> None:
    """Reject a candidate, shadow or canary retriever (audited; its own embeddings go)."""
    from deploy.retriever_rollout import move_retriever
    from explore.errors import DomainError
    from log.schema import make_engine

    engine = make_engine(get_settings().database_url)
    try:
        record = move_retriever(engine, loop, version, "rejected", actor=_actor(), reason=reason)
    except DomainError as err:
        _fail(err)
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(record.to_json()).decode())


@retriever.command("rollout")
def rollout_cmd(
    version: str = typer.Argument(...),
    loop: str = typer.Option(..., "--loop"),
    to: str = typer.Option(..., "--to", help="shadow or canary."),
    percent: float | None = typer.Option(
        None, "--percent", help="Canary only: its share of units (default: the loop's)."
    ),
    override: bool = typer.Option(
        False, "--override", help="To canary without a passed gate verdict (needs --reason)."
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (audited)."),
) -> None:
    """Move a retriever to shadow (retrieves beside live, never served) or canary (retrieves for
    --percent % of the units; needs a passed retriever-gate verdict or --override with
    --reason): it embeds the catalog with its item tower first; serving workers pick it up
    within DS_LOOP_REFRESH_S."""
    from decision_service.retrieval import RetrievalRegistry
    from explore.errors import DomainError
    from log.schema import make_engine

    if to not in ("shadow", "canary"):
        raise typer.BadParameter("--to must be shadow or canary", param_hint="--to")
    engine = make_engine(get_settings().database_url)
    try:
        record = RetrievalRegistry(engine).move(
            loop,
            version,
            to,
            _actor(),
            reason=reason,
            override=override,
            canary_percent=percent,
        )
    except DomainError as err:
        _fail(err)
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(record.to_json()).decode())


@retriever.command("rollback")
def rollback_cmd(
    loop: str = typer.Option(..., "--loop"),
    reason: str = typer.Option(..., "--reason", help="Why (audited)."),
    to: str | None = typer.Option(None, "--to", help="The retired version to restore."),
    expected_live: str | None = typer.Option(
        None, "--expected-live", help="Refuse unless this is still the live retriever."
    ),
) -> None:
    """Roll the live retriever back to the one it replaced (or --to), re-embedding the catalog
    with it (audited)."""
    from decision_service.retrieval import RetrievalRegistry
    from explore.errors import DomainError
    from log.schema import make_engine

    engine = make_engine(get_settings().database_url)
    try:
        record = RetrievalRegistry(engine).rollback(
            loop, _actor(), reason=reason, to=to, expected_live=expected_live
        )
    except DomainError as err:
        _fail(err)
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(record.to_json()).decode())


@retriever.command("promote")
def promote_cmd(
    version: str = typer.Argument(...),
    loop: str = typer.Option(..., "--loop"),
    override: bool = typer.Option(
        False, "--override", help="Go live without a passed gate verdict (needs --reason)."
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (audited)."),
) -> None:
    """Make a candidate, shadow or canary retriever live once its latest retriever-gate verdict
    passed (or with --override and --reason, audited): the catalog gets its embeddings (a
    shadow's or canary's own, computed when it entered; a candidate's computed now) in the same
    transaction; serving workers swap their index within DS_LOOP_REFRESH_S."""
    from decision_service.retrieval import RetrievalRegistry
    from explore.errors import DomainError
    from log.schema import make_engine

    engine = make_engine(get_settings().database_url)
    try:
        record = RetrievalRegistry(engine).promote(
            loop, version, _actor(), reason=reason, override=override
        )
    except DomainError as err:
        _fail(err)
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(record.to_json()).decode())
