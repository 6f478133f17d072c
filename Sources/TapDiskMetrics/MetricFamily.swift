/// One metric family as both exposition formats need it: a name, help, a type and its samples.
///
/// The exporter builds these from daemons' replies on every scrape rather than keeping live
/// instruments (swift-prometheus' model): the values are the daemons' own counters and
/// histograms, copied, never observed here.
package struct MetricFamily: Sendable, Equatable {
    package enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    /// A histogram as exposed: cumulative counts per finite upper bound, then the total.
    package struct Histogram: Sendable, Equatable {
        /// Finite upper bounds in the family's unit, ascending.
        package var bounds: [Double]
        /// `cumulative[i]` observations were at most `bounds[i]`.
        package var cumulative: [UInt64]
        package var count: UInt64
        package var sum: Double

        package init(bounds: [Double], cumulative: [UInt64], count: UInt64, sum: Double) {
            self.bounds = bounds
            self.cumulative = cumulative
            self.count = count
            self.sum = sum
        }
    }

    package enum Value: Sendable, Equatable {
        case integer(UInt64)
        case double(Double)
        case histogram(Histogram)
    }

    package struct Sample: Sendable, Equatable {
        package var labels: [Label]
        package var value: Value

        package init(labels: [Label], value: Value) {
            self.labels = labels
            self.value = value
        }
    }

    package struct Label: Sendable, Equatable {
        package var name: String
        package var value: String

        package init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    /// The family's name; for a counter without `_total`, which the renderers append.
    package var name: String
    package var help: String
    package var kind: Kind
    package var samples: [Sample]

    package init(name: String, help: String, kind: Kind, samples: [Sample] = []) {
        self.name = name
        self.help = help
        self.kind = kind
        self.samples = samples
    }
}
