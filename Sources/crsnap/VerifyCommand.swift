import ArgumentParser
import CrsnapCore
import Foundation

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check a snapshot end to end.",
        discussion: """
        Checks that the manifest parses and names this snapshot, that every CRIU
        image matches the SHA-256 recorded at take time (and that no image was
        added), that the filesystem snapshot exists and is read-only, and that
        the unlinked open files it captured are there with their sizes.
        rollback runs the same checks first. Changes nothing. Exits 1 when the
        snapshot is damaged, naming each problem.
        """
    )

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON: id, ok, problems, images_checked.") var json = false
    @Argument(help: "Snapshot id, NAME@N.") var id: String

    func run() throws {
        try reporting {
            let sid = try SnapshotID(parsing: id)
            let r = try Verify.verify(store: try storeOptions.openExisting(), id: sid)
            if json {
                try printJSON(r)
            } else if r.ok {
                print("\(r.id): ok (\(r.images_checked) images match their checksums; fs snapshot present and read-only)")
            }
            if !r.ok {
                throw CrsnapError(.failed, "snapshot \(r.id) is damaged: " + r.problems.joined(separator: "; "))
            }
        }
    }
}
