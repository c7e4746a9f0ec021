"""What a run is made of and leaves behind: the typed config, datasets, models, checkpoints
and the run folder. Imports absa.core and the base modules only."""
