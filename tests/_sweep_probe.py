"""Imported by evaluate.py in shot-sweep tests (via LAVIS_MMICT_EXTRA_IMPORTS): the task
``icl_vqa_demo_probe`` is ``icl_vqa`` whose result records also say how many demonstrations each
query had and which demo format the model used, so a test can check what each K evaluated."""
from lavis.common.registry import registry

from lavis_mmict.tasks.icl_vqa import ICLVQATask


@registry.register_task("icl_vqa_demo_probe")
class DemoCountingVQATask(ICLVQATask):
    def valid_step(self, model, samples):
        records = super().valid_step(model, samples)
        demo_counts = samples["demo_mask"].sum(dim=1).tolist()
        for record, count in zip(records, demo_counts):
            record["num_demos"] = int(count)
            record["demo_format"] = model.demo_format
        return records
