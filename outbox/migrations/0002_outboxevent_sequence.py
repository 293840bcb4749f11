"""Per-aggregate ordering column `sequence`, filled by the database, and the relay's indexes.

PostgreSQL: a sequence with CACHE 1 (values follow insertion order across every connection) as
the column default. SQLite: the rowid copied by an AFTER INSERT trigger. Existing rows are
numbered in `created_at` order.
"""

from django.db import migrations, models

import outbox.models

POSTGRES_FORWARD = [
    "CREATE SEQUENCE IF NOT EXISTS outbox_event_sequence_seq CACHE 1",
    "ALTER TABLE outbox_event ADD COLUMN sequence bigint",
    """UPDATE outbox_event e SET sequence = o.n
       FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM outbox_event) o
       WHERE e.id = o.id""",
    """SELECT setval('outbox_event_sequence_seq',
                     COALESCE((SELECT max(sequence) FROM outbox_event), 0) + 1, false)""",
    """ALTER TABLE outbox_event
       ALTER COLUMN sequence SET DEFAULT nextval('outbox_event_sequence_seq'),
       ALTER COLUMN sequence SET NOT NULL""",
    "ALTER SEQUENCE outbox_event_sequence_seq OWNED BY outbox_event.sequence",
]
POSTGRES_BACKWARD = ["ALTER TABLE outbox_event DROP COLUMN sequence"]

SQLITE_FORWARD = [
    "ALTER TABLE outbox_event ADD COLUMN sequence bigint NULL",
    "UPDATE outbox_event SET sequence = rowid",
    """CREATE TRIGGER outbox_event_sequence AFTER INSERT ON outbox_event
       FOR EACH ROW WHEN NEW.sequence IS NULL
       BEGIN UPDATE outbox_event SET sequence = NEW.rowid WHERE rowid = NEW.rowid; END""",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS outbox_event_sequence",
    "ALTER TABLE outbox_event DROP COLUMN sequence",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        statements = statements_by_vendor.get(schema_editor.connection.vendor)
        if statements is None:
            raise NotImplementedError(f"outbox: no sequence DDL for {schema_editor.connection.vendor}")
        for statement in statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("outbox", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(
                    _run({"postgresql": POSTGRES_FORWARD, "sqlite": SQLITE_FORWARD}),
                    _run({"postgresql": POSTGRES_BACKWARD, "sqlite": SQLITE_BACKWARD}),
                )
            ],
            state_operations=[
                migrations.AddField(
                    model_name="outboxevent",
                    name="sequence",
                    field=models.BigIntegerField(
                        db_default=outbox.models.NextOutboxSequence(), editable=False, null=True
                    ),
                ),
            ],
        ),
        migrations.AlterModelOptions(name="outboxevent", options={"ordering": ["sequence"]}),
        migrations.AddIndex(
            model_name="outboxevent",
            index=models.Index(
                condition=models.Q(("status", "pending")),
                fields=["sequence"],
                name="outbox_pending_seq_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="outboxevent",
            index=models.Index(
                condition=models.Q(("status__in", ["pending", "dead"])),
                fields=["aggregatetype", "aggregateid", "sequence"],
                name="outbox_unpublished_agg_idx",
            ),
        ),
    ]
