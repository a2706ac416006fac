"""The ablation study (`minimind-spec ablate`), front end: no torch here.

`task` reads a study task (its data generator, the tiny dimensions every spec is trained at,
the step budgets); `design` pairs the base spec with each ablation, derives the specs actually
trained, and decides which stages each arm trains and which of the card's claims it tests;
`runs` keys, orders and launches the training runs (one `minimind-spec train` process each);
`verdict` turns per-seed measurements into confirmed / not observed / contradicted; `report`
writes report.md and report.json. The measurements (torch) are in
`minimind_spec.engine.study`.
"""
