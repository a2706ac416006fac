"""The two halves of the stage registry agree: every stage kind the front end defines has an engine
factory, `train` offers every kind's data flag, and the model finder looks in every kind's stage
directory; a kind added to one half and not the other fails here."""

from __future__ import annotations

from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.train.stages import FACTORIES
from minimind_spec.model_files import STAGES_NEWEST_FIRST
from minimind_spec.stages import STAGE_ORDER, STAGES, StageKind


def test_every_stage_kind_has_a_factory():
    assert set(FACTORIES) == set(StageKind) == {d.kind for d in STAGES}


def test_train_offers_every_stages_data_flag():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for definition in STAGES:
        assert definition.data_flag in result.output


def test_the_newest_stage_is_looked_for_first():
    assert STAGES_NEWEST_FIRST == tuple(reversed(STAGE_ORDER))
