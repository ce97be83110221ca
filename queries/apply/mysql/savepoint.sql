-- Each correction runs under a savepoint, so a refused one leaves the batch going.
SAVEPOINT recon_correction
