"""instances: content sha256 and conflicting copies of a SOP Instance UID

The SOP Instance UID stops being unique on its own: one original per UID (a partial unique
index where conflict_of_id IS NULL), and each content at most once per UID. Existing rows
keep NULL in content_sha256; the service hashes their file when it next compares them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09 10:00:00.000000
"""

import sqlalchemy as sa

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ORIGINAL_ONLY = "conflict_of_id IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("conflict_of_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_instances_conflict_of_id_instances"),
            "instances",
            ["conflict_of_id"],
            ["id"],
        )
        batch_op.create_index(
            batch_op.f("ix_instances_conflict_of_id"), ["conflict_of_id"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_instances_sop_instance_uid"))
        batch_op.create_index(
            batch_op.f("ix_instances_sop_instance_uid"), ["sop_instance_uid"], unique=False
        )
        batch_op.create_index(
            "uq_instances_sop_original",
            ["sop_instance_uid"],
            unique=True,
            sqlite_where=sa.text(_ORIGINAL_ONLY),
            postgresql_where=sa.text(_ORIGINAL_ONLY),
        )
        batch_op.create_unique_constraint(
            "uq_instances_sop_content", ["sop_instance_uid", "content_sha256"]
        )


def downgrade() -> None:
    # Conflicting copies cannot be kept under a unique SOP Instance UID: their rows go (their
    # files stay in the data directory, named <sop>.<sha>.dcm).
    op.execute("DELETE FROM instances WHERE conflict_of_id IS NOT NULL")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_constraint("uq_instances_sop_content", type_="unique")
        batch_op.drop_index("uq_instances_sop_original")
        batch_op.drop_index(batch_op.f("ix_instances_sop_instance_uid"))
        batch_op.create_index(
            batch_op.f("ix_instances_sop_instance_uid"), ["sop_instance_uid"], unique=True
        )
        batch_op.drop_index(batch_op.f("ix_instances_conflict_of_id"))
        batch_op.drop_constraint(
            batch_op.f("fk_instances_conflict_of_id_instances"), type_="foreignkey"
        )
        batch_op.drop_column("conflict_of_id")
        batch_op.drop_column("content_sha256")
