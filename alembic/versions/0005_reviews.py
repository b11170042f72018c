"""reviews: a radiologist's accept, edit or reject of the AI result on one image

One row per review (issue 29): who, what (action, origin, class, outlines per frame), and the
corrected SEG and review SR it made. content_key is unique so a double-clicked send is one
review.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:00:00.000000
"""

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("reviewer", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=True),
        sa.Column("frames", sa.JSON(), nullable=False),
        sa.Column("content_key", sa.String(length=64), nullable=False),
        sa.Column("seg_output_id", sa.Integer(), nullable=True),
        sa.Column("sr_output_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_reviews_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["seg_output_id"], ["outputs.id"], name=op.f("fk_reviews_seg_output_id_outputs")
        ),
        sa.ForeignKeyConstraint(
            ["sr_output_id"], ["outputs.id"], name=op.f("fk_reviews_sr_output_id_outputs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
        sa.UniqueConstraint("content_key", name=op.f("uq_reviews_content_key")),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviews_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_reviews_sop_instance_uid"), ["sop_instance_uid"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_reviews_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reviews_created_at"))
        batch_op.drop_index(batch_op.f("ix_reviews_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_reviews_job_id"))
    op.drop_table("reviews")
