import pytest

from conftest import assert_one_line_error
from harness.course.config import default_course_text, load_course, parse_course
from harness.errors import HarnessError


def test_the_packaged_default_course():
    c = load_course()
    assert c.data_source == "wiki-vital" and c.data_split == "validation"
    assert c.clm.protocol == "clm-v1" and c.clm.tokenizer == "gpt2" and c.clm.context == 64
    assert c.mlm.protocol == "mlm-v1" and c.mlm.seed == 1234
    assert c.tolerances.val_loss_nats == 0.25
    assert c.max_points == 100
    assert c.requirements["gpt"]["d_model"] == (64, 256)
    assert len(c.fingerprint) == 64


def test_the_fingerprint_ignores_comments_but_not_values():
    text = default_course_text()
    base = parse_course(text).fingerprint
    assert parse_course("# a new comment\n" + text.replace("= 64 ", "=   64 ", 1)).fingerprint == base
    assert parse_course(text.replace("val_loss_nats = 0.25", "val_loss_nats = 0.3")).fingerprint != base


MINIMAL_RUBRIC = '\n[[rubric]]\nname = "a"\nkind = "loads"\npoints = 1\n'


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[data]\nsourc = 'x'\n" + MINIMAL_RUBRIC, "data.sourc is not a course key; [data] allows: source, split"),
        ("[data]\nsplit = 'dev'\n" + MINIMAL_RUBRIC, "data.split = 'dev' is not allowed; use one of: train, validation, test"),
        ("[eval.clm]\ncontext = 0\n" + MINIMAL_RUBRIC, "eval.clm.context must be > 0"),
        ("[eval.clm]\ncontext = 'long'\n" + MINIMAL_RUBRIC, "eval.clm.context must be int"),
        ("[eval.clm]\ncontext = 32\nstride = 64\n" + MINIMAL_RUBRIC, "stride (64) must not exceed context (32)"),
        ("[eval.mlm]\nprotocol = 'mlm-v2'\n" + MINIMAL_RUBRIC, "eval.mlm.protocol = 'mlm-v2' is not allowed; use one of: mlm-v1"),
        ("[requirements.gpt]\nd_model = [256, 64]\n" + MINIMAL_RUBRIC, "requirements.gpt.d_model must be [min, max]"),
        ("[tolerances]\nval_loss_nats = -1\n" + MINIMAL_RUBRIC, "tolerances.val_loss_nats must be > 0"),
        ("[[rubric]]\nname = 'a'\nkind = 'vibes'\npoints = 1\n", "rubric[0].kind = 'vibes' is not allowed"),
        ("[data]\n", "rubric is missing"),
        ("[data\n", "is not valid TOML"),
        ("extra = 1\n" + MINIMAL_RUBRIC, "extra is not a course key; the top level allows"),
    ],
)
def test_a_malformed_course_names_the_key_and_what_is_allowed(text, fragment):
    with pytest.raises(HarnessError) as e:
        parse_course(text)
    assert e.value.code == "course-invalid"
    assert fragment in e.value.message, e.value.message


def test_course_init_writes_an_editable_copy_and_relative_paths_follow_it(tmp_path, run_cli):
    path = tmp_path / "term" / "course.toml"
    path.parent.mkdir()
    run_cli("course", "init", path, check=0)
    c = load_course(path)
    assert c.fingerprint == load_course().fingerprint
    assert c.resolve(c.references["gpt"]) == tmp_path / "term" / "reference_model" / "gpt"
    assert_one_line_error(run_cli("course", "init", path), "already exists")
    path.write_text(path.read_text().replace("context = 64 ", "context = 0 "))
    assert_one_line_error(run_cli("course", "show", "--course", path), "eval.clm.context must be > 0")
    assert_one_line_error(run_cli("course", "show", "--course", tmp_path / "none.toml"), "does not exist")
