/// A CPU list as `taskset` and systemd's `CPUAffinity=` write it: `0`, `0,2`, `1-3,6`.
package enum CPUList {
    /// The CPUs named, ascending and without duplicates; nil for anything else.
    package static func parse(_ text: String) -> [Int]? {
        var cpus = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let low = Int(bounds[0]), low >= 0,
                let high = Int(bounds[bounds.count - 1]), high >= low, high < 1024
            else { return nil }
            for cpu in low...high { cpus.insert(cpu) }
        }
        return cpus.isEmpty ? nil : cpus.sorted()
    }
}
