"""medk2n: K->N cross-modal MRI synthesis (train -> export -> torch-free runtime).

Kept import-light on purpose: `import medk2n.runtime` must never pull torch.
"""

__version__ = "0.1.0"
