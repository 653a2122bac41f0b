"""The embedding examples: a C program and a Go program using the exported digits model,
built with make and go, fed rows on stdin, and checked against the reference's classes."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import ROOT

import distill
from distill.backends import prepare


@pytest.fixture()
def digits_rows(workload, tmp_path):
    config, result = workload("digits")
    path = tmp_path / "digits.distill"
    distill.save(result.model, path)
    x = prepare(config, config.seed).x["test"][:40]
    rows = "\n".join(",".join(f"{v:g}" for v in row) for row in x) + "\n"
    labels = [result.model.labels[i] for i in distill.run(result.model, x).argmax(-1)]
    return path, rows, labels


def test_c_embedding(digits_rows, tmp_path):
    model, rows, labels = digits_rows
    folder = shutil.copytree(ROOT / "examples" / "embed" / "c", tmp_path / "c")
    subprocess.run(["make", f"MODEL={model}", "CFLAGS=-std=c99 -O2 -Wall -Wextra -Werror"],
                   cwd=folder, check=True, capture_output=True)
    out = subprocess.run(["./classify"], cwd=folder, input=rows, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == labels
    bad = subprocess.run(["./classify"], cwd=folder, input="1,2,3\n", capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "expected 64" in bad.stderr


def test_go_embedding(digits_rows, tmp_path):
    model, rows, labels = digits_rows
    folder = shutil.copytree(ROOT / "examples" / "embed" / "go", tmp_path / "go")
    subprocess.run(["distill", "export", str(model), "--lang", "go", "--name", "digits",
                    "-o", "model"], cwd=folder, check=True, capture_output=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    out = subprocess.run(["go", "run", "."], cwd=folder, input=rows, capture_output=True,
                         text=True, env=env, check=True)
    assert out.stdout.split() == labels
    assert np.unique(labels).size > 3
