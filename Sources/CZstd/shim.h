// zstd's streaming API (libzstd), for compressed archives: `export
// --compress zstd` writes a zstd frame; `import` reads one.
#include <zstd.h>
