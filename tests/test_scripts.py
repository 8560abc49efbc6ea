"""Every command the table scripts would run parses with the entry scripts' own parsers."""
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from helper.options import parse_student_args, parse_teacher_args
from helper.run_folder import student_run_name, teacher_run_name

SCRIPTS = sorted(p for p in (Path(__file__).resolve().parents[1] / "scripts").glob("*.sh")
                 if p.name != "common.sh")


def _commands(script):
    env = {**os.environ, "DRY_RUN": "1", "TRIALS": "2", "GPUS": "0 1"}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_commands_parse(script):
    commands = _commands(script)
    assert commands, f"{script.name} printed no commands"
    folders = set()
    for argv in commands:
        assert argv[0] == "python", argv
        if argv[1] == "train_teacher.py":
            config = parse_teacher_args(argv[2:])
            folders.add(("t", config.args.save_folder, teacher_run_name(config)))
        else:
            assert argv[1] == "train_student.py", argv
            config = parse_student_args(argv[2:])
            folders.add(("s", config.args.save_folder, config.args.path_t,
                         student_run_name(config, "teacher")))
    # Every run gets a folder of its own (a clash would make the second run refuse to start).
    assert len(folders) == len(commands)
