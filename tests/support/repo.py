"""REPO_ROOT: the clone's top directory, which every helper, test and tool that reads
a project file (k8s/, the Makefile, docs/) starts from."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
