"""What a run is made of and leaves behind: the typed config, datasets, models, checkpoints
and the run folder. Imports absa.math and the base modules only."""
