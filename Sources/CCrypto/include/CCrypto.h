// SHA-256 of a file through OpenSSL's libcrypto (EVP), streaming, for the
// image checksums crsnap records at take time and checks before a restore.
#ifndef CRSNAP_CCRYPTO_H
#define CRSNAP_CCRYPTO_H

#include <stddef.h>

/// Hashes everything readable from `fd` (from its current offset) into
/// `out` (32 bytes). Returns 0, or -1 with errno set (EIO for a libcrypto
/// failure). `bytes` gets the number of bytes hashed.
int crsnap_sha256_fd(int fd, unsigned char out[32], unsigned long long *bytes);

#endif
