"""A scripts directory that discovers its models, holds folders, a linked Dockerfile
folder, files with spaces and links: every layout the model directory must receive."""

from madengine.utils.discover_models import CustomModel


def list_models():
    return [
        CustomModel(
            name="nested",
            dockerfile="docker/layouts",  # through scripts/nested/docker -> ../../docker
            scripts="run.sh",
            n_gpus="1",
            tags=["layouts"],
            args="",
        )
    ]
