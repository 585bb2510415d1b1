"""The `ltc-fast` command-line application, built on the library in `ltc_fast` and kept apart from it: the
commands (cli), fine-tuning with transformers' Trainer (finetune), evaluation and metrics (evaluation), reading the
user's data files (datafiles) and the bundled GoEmotions data set (goemotions, bundled/), writing outputs
(output), run provenance (provenance), the demo (demo) and `ltc-fast bench` (bench_command).

The library never imports from here.
"""
