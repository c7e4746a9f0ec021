"""The training engine: the loop, the signals a policy wants (probes), acceleration (precision, compile,
micro-batches), optimizers, loggers and evaluation. Imports absa.run and absa.core."""
