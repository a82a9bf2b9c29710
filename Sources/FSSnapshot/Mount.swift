import CLibmount
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A libmount operation that failed, with libmount's own message.
public struct MountError: Error, CustomStringConvertible {
    public let operation: String
    public let target: String
    public let message: String
    public var description: String { "\(operation) \(target): \(message)" }
}

/// Mounts and the mount table, through libmount.
public enum Mounts {
    private static func run(_ op: String, _ target: String, _ setup: (OpaquePointer) -> Void,
                            _ action: (OpaquePointer) -> Int32) throws {
        guard let cxt = mnt_new_context() else {
            throw MountError(operation: op, target: target, message: "cannot allocate a libmount context")
        }
        defer { mnt_free_context(cxt) }
        // crsnap's mounts are its own bookkeeping: no /etc/fstab lookups, no utab.
        mnt_context_disable_mtab(cxt, 1)
        setup(cxt)
        let rc = action(cxt)
        var buf = [CChar](repeating: 0, count: 1024)
        let ex = mnt_context_get_excode(cxt, rc, &buf, buf.count)
        if ex != 0 {
            let msg = String(cString: buf)
            let errnoText = mnt_context_get_syscall_errno(cxt) != 0
                ? String(cString: strerror(mnt_context_get_syscall_errno(cxt))) : "failed"
            throw MountError(operation: op, target: target, message: msg.isEmpty ? errnoText : msg)
        }
    }

    /// mount(8) semantics through libmount: `options` may carry "bind", "loop", "ro"...
    public static func mount(source: String, target: String, type: String?, options: String?) throws {
        try run("mount", target, { cxt in
            mnt_context_set_source(cxt, source)
            mnt_context_set_target(cxt, target)
            if let type { mnt_context_set_fstype(cxt, type) }
            if let options { mnt_context_set_options(cxt, options) }
        }, { mnt_context_mount($0) })
    }

    public static func bind(_ source: String, at target: String) throws {
        try mount(source: source, target: target, type: nil, options: "bind")
    }

    /// An overlay with the given layers at `target`.
    public static func overlay(lower: String, upper: String, work: String, at target: String) throws {
        let opts = "lowerdir=\(lower),upperdir=\(upper),workdir=\(work)"
        try mount(source: "overlay", target: target, type: "overlay", options: opts)
    }

    public static func unmount(_ target: String, lazy: Bool = false) throws {
        try run("unmount", target, { cxt in
            mnt_context_set_target(cxt, target)
            if lazy { mnt_context_enable_lazy(cxt, 1) }
        }, { mnt_context_umount($0) })
    }

    /// Unmounts `target`, or detaches it lazily when it is busy.
    public static func unmountOrDetach(_ target: String) throws {
        do {
            try unmount(target)
        } catch {
            try unmount(target, lazy: true)
        }
    }

    public struct Entry: Equatable {
        public let source: String
        public let target: String
        public let fstype: String
        public let options: String
    }

    /// The current mount table of this process (/proc/self/mountinfo as libmount parses it).
    public static func table() throws -> [Entry] {
        guard let tb = mnt_new_table_from_file("/proc/self/mountinfo") else {
            throw MountError(operation: "read mount table", target: "/proc/self/mountinfo", message: "libmount could not parse it")
        }
        defer { mnt_unref_table(tb) }
        guard let it = mnt_new_iter(Int32(MNT_ITER_FORWARD)) else { return [] }
        defer { mnt_free_iter(it) }
        var out: [Entry] = []
        var fs: OpaquePointer?
        while mnt_table_next_fs(tb, it, &fs) == 0, let fs {
            func s(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }
            out.append(Entry(source: s(mnt_fs_get_source(fs)), target: s(mnt_fs_get_target(fs)),
                             fstype: s(mnt_fs_get_fstype(fs)), options: s(mnt_fs_get_options(fs))))
        }
        return out
    }

    public static func isMountPoint(_ path: String) -> Bool {
        let canon = (path as NSString).standardizingPath
        return ((try? table()) ?? []).contains { $0.target == canon }
    }

    /// The mount whose filesystem holds `path` (the longest target prefix).
    public static func mountContaining(_ path: String) -> Entry? {
        let canon = (path as NSString).resolvingSymlinksInPath
        return ((try? table()) ?? [])
            .filter { canon == $0.target || canon.hasPrefix($0.target == "/" ? "/" : $0.target + "/") }
            .max { $0.target.count < $1.target.count }
    }
}
