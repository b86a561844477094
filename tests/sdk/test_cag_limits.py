"""A question is checked against the model's context window before any work, in every entry point
(Python API, CLI; the server has its own test), and photos shown to the model are decoded at a bounded size."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from covip.sdk.errors import InputError  # noqa: E402
from tests.sdk.serve_util import fast_assistant, png  # noqa: E402

LONG = "word " * 4500  # 4,501 tokens with the tiny model's tokenizer; its window is 4,096


@pytest.fixture
def bot(tmp_path: Path, tiny_engine, tiny_embedder):
    bot = fast_assistant(tmp_path / "home", tiny_engine, tiny_embedder)
    bot.memory.add_user("ana")
    bot.remember("ana", png("Bori", 0), "User: Bori at the Han river.", ["Bori"])
    yield bot
    bot.close()
    bot.memory.close()


def test_question_over_the_context_window_is_refused_before_any_work(bot, tiny_engine) -> None:
    before = tiny_engine.last
    for cag in (True, False):
        with pytest.raises(InputError) as info:
            bot.ask("ana", png("Bori", 1), LONG, cag=cag)
        message = str(info.value)
        assert "4,501 tokens" in message and "context length of 4,096 tokens" in message, message
        assert ("caption" in message) == cag
    assert tiny_engine.last is before  # nothing was generated
    with pytest.raises(InputError, match="characters"):  # far too long: refused without tokenizing
        bot.ask("ana", png("Bori", 1), "x" * (64 * 4096 + 1))
    with pytest.raises(InputError, match="must be text"):
        bot.ask("ana", png("Bori", 1), None)  # type: ignore[arg-type]
    assert bot.ask("ana", png("Bori", 1), "Who is this?").answer is not None
    from covip.sdk.cag import context_length

    assert context_length(tiny_engine) == 4096


def test_cli_ask_refuses_a_question_over_the_window(tmp_path: Path, tiny_vlm_dir) -> None:
    from click.testing import CliRunner

    from covip.sdk.cli import cli

    home, photo = tmp_path / "home", tmp_path / "bori.png"
    photo.write_bytes(png("Bori", 0))
    run = CliRunner()
    assert run.invoke(cli, ["--home", str(home), "init", "--embedder", "tiny", "--model", "tiny"]).exit_code == 0
    assert run.invoke(cli, ["--home", str(home), "user", "add", "ana"]).exit_code == 0
    result = run.invoke(cli, ["--home", str(home), "ask", str(photo), LONG, "--user", "ana"])
    assert result.exit_code == 2 and "context length of 4,096 tokens" in result.stderr, result.output
    assert "Traceback" not in result.stderr


def test_photos_are_shown_to_the_model_at_a_bounded_size(bot) -> None:
    from PIL import Image

    from covip.sdk.imaging import image_to_png_bytes

    big = image_to_png_bytes(Image.new("RGB", (3000, 1500), (200, 30, 30)))
    bot.memory.config.max_pixels = 10_000_000
    pic = bot.cag._load(big)
    assert max(pic.image.size) == bot.cag.config.photo_max_side == 2048 and (pic.width, pic.height) == (3000, 1500)
    assert bot.ask("ana", big, "Who is this?").answer is not None
