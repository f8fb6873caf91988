"""The ``rarec-lite`` command: --version, defaults in every --help, train-sasrec says how long it may run."""

from __future__ import annotations

import argparse

import pytest

from rarec_lite import __version__, cli


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rarec-lite {__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["prepare", "train-sasrec", "pipeline"])
def test_every_help_shows_every_default(command, capsys):
    sub = _subparsers(cli.build_parser())[command]
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]  # the option list, not the usage
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    for action, following in zip(options, options[1:] + [None]):
        flag = action.option_strings[-1]
        assert flag in text
        after = text.split(flag, 1)[1]  # this option's own help: up to the next option's flag
        after = after.rsplit(following.option_strings[-1], 1)[0] if following else after  # (help may name it)
        if action.default is False:  # an off switch: its help says what turning it on does
            continue
        shown = f"(default: {action.default})" if action.default is not None else "(default: "
        assert shown in after, f"{command} {flag}: no default in {after!r}"


def test_train_sasrec_announces_its_epoch_budget_and_early_stopping(monkeypatch, tmp_path, capsys):
    from rarec_lite import data

    toy = data.synthetic_dataset(num_users=60, num_items=60, seed=0)
    monkeypatch.setattr(data, "load_dataset", lambda name: toy)
    rc = cli.main(["train-sasrec", "--out", str(tmp_path / "run"), "--epochs", "2", "--patience", "1",
                   "--hidden", "8", "--max-len", "6", "--num-layers", "1", "--batch-size", "32"])
    out = capsys.readouterr().out
    assert rc == 0
    first = out.splitlines()[0]
    assert "up to 2 epochs (--epochs)" in first and "after 1 epochs without a better validation NDCG@10" in first
    assert "decays to 0 over them (--lr-schedule cosine)" in first  # the default schedule
    assert "60 users, 60 items" in first
