"""The pipeline graph declared once: steps, their code and config dependencies, dvc.yaml generation."""
