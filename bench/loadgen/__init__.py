"""Load for the benchmarks: virtual Optuna workers (the generator) and real ones.

`wire` encodes requests and reads replies by hand, `workload` says what a worker
does per trial, `virtual` is one simulated `GrpcStorageProxy` worker, `process`
runs hundreds of them per process on grpc.aio, `real` runs unmodified
`study.optimize` workers in threads, and `control` is what the runner hands either
kind of process.
"""
