import Foundation

/// Packets recorded from the real CRIU 4.2.1 (/usr/local/sbin/criu, Debian sid
/// build) on Linux 6.18, as root, over `criu swrk 3` on an AF_UNIX
/// SOCK_SEQPACKET socketpair, by a throwaway Python recorder (hand-encoded
/// protobuf requests, every received packet saved byte for byte).
///
/// Dump requests: CriuReq{type: DUMP, opts: {images_dir_fd, pid, leave_running:
/// true, log_level: 4, log_file: "dump.log", notify_scripts: true}} against
/// `setsid sleep 1000` (its own session, host namespaces); every NOTIFY was
/// answered with CriuReq{type: NOTIFY, notify_success: true} unless said.
///
/// Note: on this VM CRIU fills cr_errmsg with the first error it logged, which
/// is the harmless "Can't setup RLIMIT_NOFILE" (no CAP_SYS_RESOURCE), even on
/// success and even when the dump failed for another reason.
enum RecordedReplies {
    /// CriuReq{type: VERSION}: one reply, version 4.2.1 (major 4, minor 2, sublevel 1).
    static let version: [String] = [
        "080a10015206080410022001",
    ]

    /// Successful leave-running dump: NOTIFY pre-dump, query-ext-files, post-dump, then DUMP success.
    static let dumpSuccess: [String] = [
        "080610012a0a0a087072652d64756d70",
        "080610012a110a0f71756572792d6578742d66696c6573",
        "080610012a0b0a09706f73742d64756d70",
        "080110011a0208004a5e4572726f722028637269752f7574696c2e633a31353334293a20726c696d69743a2043616e277420736574757020524c494d49545f4e4f46494c4520666f722073656c663a204f7065726174696f6e206e6f74207065726d69747465640a",
    ]

    /// Same dump, the post-dump NOTIFY answered with notify_success: false: CRIU resumes the task and replies DUMP success=false (no cr_errno).
    static let dumpRefusedAtPostDump: [String] = [
        "080610012a0a0a087072652d64756d70",
        "080610012a110a0f71756572792d6578742d66696c6573",
        "080610012a0b0a09706f73742d64756d70",
        "080110001a0208004a5e4572726f722028637269752f7574696c2e633a31353334293a20726c696d69743a2043616e277420736574757020524c494d49545f4e4f46494c4520666f722073656c663a204f7065726174696f6e206e6f74207065726d69747465640a",
    ]

    /// Dump of pid 4000000 (no such process): NOTIFY pre-dump, then DUMP success=false, cr_errno 3 (ESRCH).
    static let dumpNoSuchProcess: [String] = [
        "080610012a0a0a087072652d64756d70",
        "080110001a02080038034a5e4572726f722028637269752f7574696c2e633a31353334293a20726c696d69743a2043616e277420736574757020524c494d49545f4e4f46494c4520666f722073656c663a204f7065726174696f6e206e6f74207065726d69747465640a",
    ]

    /// The images directory's `stats-dump` written by the successful dump above:
    /// freezing 178 us, frozen 5640 us, memdump 584 us, memwrite 172 us, 30 pages written.
    static let statsDump = "4059105506330957220000000a2008b20110882c18c80420ac0128393000381e4000480050065806600068007000"

    static func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            out.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    static func packets(_ hex: [String]) -> [[UInt8]] { hex.map(bytes) }
}
