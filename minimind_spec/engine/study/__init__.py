"""The ablation study's engine: run a study end to end (`study`), measure the trained models
(`evaluate`), draw the plots (`plots`). The design, the runs and the verdicts are torch-free, in
`minimind_spec.study`."""
