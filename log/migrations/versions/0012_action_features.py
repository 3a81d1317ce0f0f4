"""Action features stored once: decisions refer to content-addressed action bodies

- action_features: (loop, digest) -> body, the JSON text of an action without its id
  (``{"features": {...}}``), digest its BLAKE2b-128 in hex. Decisions written from this
  revision on store each action as ``[id, digest]`` (log/action_store.py). Rows already stored
  keep their inline actions, which every read still takes: nothing is rewritten on upgrade.

The downgrade puts the bodies back into the decisions that refer to them (the form earlier
revisions read), then drops the table.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ID = 256
_BATCH = 500


def upgrade() -> None:
    op.create_table(
        "action_features",
        sa.Column("loop", sa.String(_ID), primary_key=True),
        sa.Column("digest", sa.String(32), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    conn = op.get_bind()
    # every decision in primary-key order, a batch at a time (an index range each: no batch
    # rescans the table); references are arrays of arrays, inline actions arrays of objects
    select_batch = sa.text(
        "SELECT loop, event_id, CAST(actions AS TEXT) FROM decisions "
        "WHERE loop > :loop OR (loop = :loop AND event_id > :event_id) "
        "ORDER BY loop, event_id LIMIT :n"
    )
    bodies = sa.text("SELECT body FROM action_features WHERE loop = :loop AND digest = :digest")
    update = sa.text(
        "UPDATE decisions SET actions = :actions WHERE loop = :loop AND event_id = :event_id"
    ).bindparams(sa.bindparam("actions", type_=sa.JSON()))
    cache: dict[tuple[str, str], dict[str, object]] = {}
    last = {"loop": "", "event_id": ""}
    while True:
        rows = conn.execute(select_batch, {**last, "n": _BATCH}).all()
        if not rows:
            break
        params = []
        for loop, event_id, stored in rows:
            if not stored.startswith("[["):
                continue
            actions = []
            for action_id, digest in orjson.loads(stored):
                body = cache.get((loop, digest))
                if body is None:
                    text = conn.execute(bodies, {"loop": loop, "digest": digest}).scalar_one()
                    body = cache[(loop, digest)] = orjson.loads(text)
                actions.append({"id": action_id, **body})
            params.append({"loop": loop, "event_id": event_id, "actions": actions})
        if params:
            conn.execute(update, params)
        last = {"loop": rows[-1][0], "event_id": rows[-1][1]}
    op.drop_table("action_features")
