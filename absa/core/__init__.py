"""absa.core, the pure math of the method: Hessian operators and eigensolvers, batch-size
policies, attacks, loss landscapes. No I/O, no collectives, no config objects: resolved
values in, tensors out. (Named core, not math: a folder named math would hide the standard
library's math module whenever absa/ itself lands on sys.path.)"""
