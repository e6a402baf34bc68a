"""Memory of the proxy tree: per idle client connection and per cached trial.

    python -m bench.memory [--db mariadb|sqlite] [--connections 5000] [--trials 20000,100000]

`shardproxy serve --workers N` runs as a real process tree (a supervisor, its
workers and multiprocessing's resource tracker); its memory is the sum of VmRSS
over the tree, read from /proc.

Idle connections (part `idle`). Client processes (spawned, their soft
RLIMIT_NOFILE raised to the hard limit) open `--connections` gRPC channels in all,
each its own TCP connection: the option `grpc.use_local_subchannel_pool` stops gRPC
from sharing one connection among channels with the same target, and every channel
sends one GetAllStudies (an empty request), so the server has accepted and served
it. The count held is checked on the server side: established TCP sockets with the
proxy's port as local port in /proc/net/tcp, matched to the workers' socket fds
(which also gives the split across workers). Figures: tree RSS before, with the
connections held and after they closed; RSS per connection (delta / connections);
the tree's CPU while they sit idle (/proc, over `--idle-seconds`, against the same
window before they were opened); responsiveness from a fresh client, before and
while they are held (GetAllStudies latency on raw bytes over 8 new connections, and
the wall time per trial of a short RandomSampler study through Optuna's
`GrpcStorageProxy`); and whether every held connection still answers a call after
the idle window. Further `--rounds` open and close the same number again on the same
proxy: memory that is retained and reused stays flat, memory that grows with every
connection ever opened does not.

Cached trials (part `trials`). For each size, a study of that many COMPLETE trials
(one float parameter, one value: the seed scenario's trials) is bulk-inserted
(`bench.databases.prefill`), a fresh proxy is started, a 100-trial study owned by the
same worker is read first (one-off costs fall before the baseline), then the big
study is read once in full: a raw GetTrials with trial_id_greater_than = -1, what a
new `GrpcStorageProxy` sends first. Figure: the owner worker's RSS delta / trials;
the other worker's delta (the front, when the connection landed there) is reported
beside it. A second full read shows whether the growth repeats.

At the open-file limit (part `limit`). The idle-connection measurement again, with
the proxy started under a soft RLIMIT_NOFILE of `--limit-nofile` (1024 is the usual
default on Linux). `shardproxy serve` raises its soft limit to the hard one before
it starts workers; this part checks that the workers got it and hold every
connection (before it did, a worker stopped accepting at about a thousand).

Soak (part `soak`, run only when asked for). 24 studies of 25 000 COMPLETE trials,
about four times `--soak-cache-memory` (32 MiB) by the cache's own count, read in
full round-robin by 3 threads for `--soak-seconds` through a proxy started with that
`--cache-memory`: after the first pass every read loads an evicted study again. The
tree's and each worker's RSS are sampled once a second; the figure is the tree's
largest growth over its baseline, against the bound (exit code 1 above it).

Bounded: every wait has a limit, a client process stops opening at its first wave
that fails, and the proxy (its own process group) and the client processes are
stopped in `finally` blocks. All traffic is to 127.0.0.1.
"""
