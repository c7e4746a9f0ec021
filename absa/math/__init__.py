"""Pure math of the method: Hessian operators and eigensolvers, batch-size policies, attacks,
loss landscapes. No I/O, no collectives, no config objects: resolved values in, tensors out."""
