import FSSnapshot
import Foundation
import ProcessCR
#if canImport(Glibc)
import Glibc
#endif

/// `crsnap doctor`: is this machine able to take and roll back snapshots?
public enum Doctor {
    public struct Check: Codable {
        public enum Status: String, Codable { case ok, warn, fail }
        public var name: String
        public var status: Status
        public var detail: String
    }

    public static func run(storePath: String) -> [Check] {
        var out: [Check] = []
        func add(_ name: String, _ status: Check.Status, _ detail: String) {
            out.append(Check(name: name, status: status, detail: detail))
        }

        add("root", geteuid() == 0 ? .ok : .fail, geteuid() == 0 ? "running as root" : "crsnap must run as root (euid is \(geteuid()))")

        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let major = Int(release.split(separator: ".").first ?? "") ?? 0
        add("kernel", major >= 5 ? .ok : .fail, "Linux \(release)" + (major >= 5 ? "" : " (crsnap needs Linux >= 5)"))

        let missingNs = ["mnt", "pid", "uts", "ipc"].filter { !Sys.exists("/proc/self/ns/\($0)") }
        add("namespaces", missingNs.isEmpty ? .ok : .fail,
            missingNs.isEmpty ? "mount, pid, uts and ipc namespaces" : "missing: \(missingNs.joined(separator: ", "))")

        add("checkpoint/restore", Sys.exists("/proc/sys/kernel/ns_last_pid") ? .ok : .fail,
            Sys.exists("/proc/sys/kernel/ns_last_pid") ? "CONFIG_CHECKPOINT_RESTORE (ns_last_pid present)"
                : "kernel lacks CONFIG_CHECKPOINT_RESTORE (/proc/sys/kernel/ns_last_pid missing)")

        let fs = (try? Sys.readText("/proc/filesystems")) ?? ""
        let have = Set(fs.split(separator: "\n").compactMap { $0.split(separator: "\t").last.map(String.init) })
        for name in ["btrfs", "overlay"] {
            add(name, have.contains(name) ? .ok : .warn,
                have.contains(name) ? "\(name) is available" : "\(name) is not in /proc/filesystems (module not loaded?)")
        }

        do {
            let h = try FreezerCgroup.hierarchy()
            add("freezer", .ok, "cgroup v\(h.version) freezer at \(h.root)")
        } catch {
            add("freezer", .fail, "\(error)")
        }

        do {
            let criu = try Criu.locate()
            let v = try criu.version()
            if v < CriuVersionInfo.required {
                add("criu version", .fail, "\(criu.binary) is CRIU \(v); crsnap needs >= \(CriuVersionInfo.required) on this kernel (Scripts/testenv installs it)")
            } else {
                add("criu version", .ok, "\(criu.binary) is CRIU \(v) (asked over RPC)")
            }
            do {
                let text = try Program.run([criu.binary, "check"])
                add("criu check", .ok, text.split(separator: "\n").last.map(String.init) ?? "passed")
            } catch let f as Program.Failure {
                let lines = f.output.split(separator: "\n").filter { $0.contains("Error") || $0.contains("fail") }
                add("criu check", .fail, "criu check failed: " + (lines.suffix(3).joined(separator: " / ")))
            } catch {
                add("criu check", .fail, "\(error)")
            }
        } catch {
            add("criu", .fail, "\(error)")
        }

        if Proc.hasCapability(Proc.capSysResource) == false {
            add("CAP_SYS_RESOURCE", .warn, "missing: CRIU cannot dump processes running under another uid (\"Can't get rlimit\"); run container workloads as root")
        } else {
            add("CAP_SYS_RESOURCE", .ok, "present")
        }

        if !Sys.isDirectory(storePath) {
            add("store", .warn, "\(storePath) does not exist yet; it is made on first use (btrfs image if the path is not on btrfs)")
        } else {
            do {
                let s = try Store.open(storePath)
                add("store", .ok, "\(s.root) on \(s.backend.name)" + (s.usesImage ? " (loop-mounted image \(s.path)/\(Store.imageName))" : ""))
                add("store cost", s.backend.capabilities.contains(.constantTimeSnapshot) ? .ok : .warn, s.costNote)
            } catch {
                add("store", .fail, "\(error)")
            }
        }
        return out
    }
}
