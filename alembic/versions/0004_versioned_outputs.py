"""versioned outputs: analysed images per model version, SR predecessors

A late image of a finished study gets its own SEG and the study a new SR naming the one it
replaces; the images a model version already analysed are recorded (analysed_images) so a
later job does not segment or send them again. Existing outputs keep NULL model_version
and predecessor_id.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 10:00:00.000000
"""

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_version", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("predecessor_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_outputs_predecessor_id_outputs"), "outputs", ["predecessor_id"], ["id"]
        )
    op.create_table(
        "analysed_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("seg_output_id", sa.Integer(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_analysed_images_job_id_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["seg_output_id"],
            ["outputs.id"],
            name=op.f("fk_analysed_images_seg_output_id_outputs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analysed_images")),
        sa.UniqueConstraint(
            "sop_instance_uid", "model_version", name="uq_analysed_images_sop_model"
        ),
    )
    with op.batch_alter_table("analysed_images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_analysed_images_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_analysed_images_sop_instance_uid"), ["sop_instance_uid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("analysed_images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_analysed_images_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_analysed_images_job_id"))
    op.drop_table("analysed_images")
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_outputs_predecessor_id_outputs"), type_="foreignkey"
        )
        batch_op.drop_column("predecessor_id")
        batch_op.drop_column("model_version")
