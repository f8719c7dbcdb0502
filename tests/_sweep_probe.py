"""Imported by evaluate.py in shot-sweep tests (via LAVIS_MMICT_EXTRA_IMPORTS): the task
``icl_vqa_demo_probe`` is ``icl_vqa`` whose result records also say how many demonstrations each
query had, their texts and which demo format the model used, so a test can check what each K
evaluated. With ``$SWEEP_PROBE_FAIL_AT_K`` set, a batch with that many demos raises (a sweep that
stops midway)."""
import os

from lavis.common.registry import registry

from lavis_mmict.tasks.icl_vqa import ICLVQATask


@registry.register_task("icl_vqa_demo_probe")
class DemoCountingVQATask(ICLVQATask):
    def valid_step(self, model, samples):
        demo_counts = samples["demo_mask"].sum(dim=1).tolist()
        if str(max(demo_counts, default=0)) == os.environ.get("SWEEP_PROBE_FAIL_AT_K"):
            raise RuntimeError(f"_sweep_probe: failing at K={max(demo_counts)} as asked")
        records = super().valid_step(model, samples)
        for record, count, texts in zip(records, demo_counts, samples["demo_text"]):
            record["num_demos"] = int(count)
            record["demo_text"] = list(texts[:int(count)])
            record["demo_format"] = model.demo_format
        return records
