"""Stand-ins for the two modules that transformers' `tests/test_modeling_common.py` imports and its sdist lacks.

- `GenerationTesterMixin` (`tests/generation/test_utils.py`): the `generate` tests. BERMo's classes are encoders that
  cannot generate, so a tester must not inherit it (`test_generation_tester_mixin_inheritance` checks exactly that);
  only the name has to exist for the import.
- `ExportTesterMixin` (`tests/exporters/test_export.py`): `ModelTesterMixin`'s base. The stand-in keeps its purpose,
  with fewer variants: every model class is exported with transformers' own exporters at their defaults
  (`torch.export` through `DynamoExporter`, ONNX through `OnnxExporter`), the export is run (the ONNX one in ONNX
  Runtime), and every output tensor must equal eager's. Marked `@slow` like transformers' export tests; the stage runs
  them (`RUN_SLOW=1`). (Strict `torch.export` is tested in tests/test_model_hardening.py.)
"""

import torch
from transformers.testing_utils import require_onnxruntime, slow, torch_device


class GenerationTesterMixin:
    """Name-only stand-in: no `generate` tests (BERMo's models cannot generate)."""


class ExportTesterMixin:
    """Export each model class with transformers' exporters, run the export, and compare it with eager."""

    test_torch_exportable = True
    export_atol = 1e-5

    def _check_exports_match_eager(self, exporter, export_config):
        if not self.test_torch_exportable:
            self.skipTest(reason=f"{type(self).__name__} sets test_torch_exportable = False")
        for model_class in self.all_model_classes:
            with self.subTest(model_class=model_class.__name__):
                config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
                inputs = self._prepare_for_class(inputs_dict, model_class)
                model = model_class(config).to(torch_device).eval()
                with torch.no_grad():
                    expected = model(**inputs)
                exported = exporter.export(model, inputs, export_config)
                actual = exported(**inputs)
                expected_names = [name for name, value in expected.items() if isinstance(value, torch.Tensor)]
                self.assertTrue(expected_names, f"{model_class.__name__} returned no tensors")
                for name in expected_names:
                    self.assertIn(name, actual, f"{model_class.__name__}: the export does not return `{name}`")
                    torch.testing.assert_close(
                        torch.as_tensor(actual[name]).to(expected[name].device),  # a runtime may answer on the host
                        expected[name], atol=self.export_atol, rtol=1e-4,
                        msg=lambda message: f"{model_class.__name__}.{name}: {message}",
                    )

    @slow
    def test_torch_export(self):
        from transformers.exporters import DynamoConfig, DynamoExporter

        self._check_exports_match_eager(DynamoExporter(), DynamoConfig())

    @slow
    @require_onnxruntime
    def test_onnx_export(self):
        from transformers.exporters import OnnxConfig, OnnxExporter

        self._check_exports_match_eager(OnnxExporter(), OnnxConfig())
