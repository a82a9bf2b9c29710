import ArgumentParser
import CrsnapCore
import Foundation

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List a container's snapshots.")

    @OptionGroup var storeOptions: StoreOptions
    @Flag(help: "Print JSON (the manifests).") var json = false
    @Argument(help: "Container name.") var name: String

    func run() throws {
        try reporting {
            try Names.validate(name)
            let c = try Container(store: try storeOptions.openExisting(), name: name)
            try c.mustExist()
            let ms = c.manifests()
            for n in c.snapshotNumbers() where !ms.contains(where: { $0.number == n }) {
                FileHandle.standardError.write(Data("crsnap: snapshot \(name)@\(n) is damaged: its manifest does not parse (crsnap verify \(name)@\(n))\n".utf8))
            }
            if json { return try printJSON(ms) }
            printTable(["ID", "TAG", "CREATED", "FROZEN(ms)", "SIZE"], ms.map {
                [$0.id, $0.tag ?? "-", formatDate($0.created), String(format: "%.0f", $0.stats.frozen_ms), formatBytes($0.stats.images_bytes)]
            })
        }
    }
}
