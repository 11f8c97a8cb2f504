"""The composition roots: the serving node (node), a storage worker process (storage_worker), logging set-up
(logs) and the ``ortho-node`` command line (cli). The only core package that may import the edges."""
