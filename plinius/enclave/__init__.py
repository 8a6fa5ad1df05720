"""The simulated SGX side: platform secrets, measurement, quotes, provisioning, sealing, counters.

There is no SGX on this machine: the enclave is a software boundary and every report says
``sgx: simulated``. The protocol is the real one in shape (measure, quote, verify, ECDH channel,
provision, seal), so the owner's side would not change on real hardware.
"""
