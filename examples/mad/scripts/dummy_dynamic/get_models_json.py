"""Models made by code, as MAD trees do for families of configurations."""

from madengine.utils.discover_models import CustomModel

BATCH_SIZES = (8, 16)


class DummyDynamicModel(CustomModel):
    def update_model(self) -> None:
        # Fields computed from others, as real trees do in their subclasses.
        self.args = f"--batch_size {self.name.rsplit('_bs', 1)[-1]}"


def list_models() -> list[CustomModel]:
    return [
        DummyDynamicModel(
            name=f"dyn_bs{size}",
            dockerfile="../../docker/dummy",
            scripts="../dummy/run.sh",
            n_gpus="1",
            owner="mad-team@example.com",
            training_precision="fp16",
            tags=["dummies", "dynamic"],
        )
        for size in BATCH_SIZES
    ]
