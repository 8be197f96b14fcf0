//! Failover regions: the tasks that must restart together.
//!
//! Two tasks joined by a channel exchange data, so a restart of one from a checkpoint must
//! restart the other too (the channel's in-flight data is lost, and the other's state may
//! reflect records the restarted one will send again). A forward edge joins task `i` to task
//! `i` only, so an all-forward pipeline splits into one region per slice; any rebalance,
//! broadcast or hash edge joins every task of both vertices. A region is a connected component
//! of the task graph.

/// Groups `tasks` tasks into failover regions given every channel as a
/// `(producer task, consumer task)` pair. Returns, for every task, its region number; regions
/// are numbered from 0 in order of their lowest task.
pub fn failover_regions(tasks: usize, channels: &[(usize, usize)]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..tasks).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for &(a, b) in channels {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            // Keep the lower task as the root, so numbering follows task order.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            parent[hi] = lo;
        }
    }
    let mut number = vec![usize::MAX; tasks];
    let mut next = 0;
    (0..tasks)
        .map(|t| {
            let r = find(&mut parent, t);
            if number[r] == usize::MAX {
                number[r] = next;
                next += 1;
            }
            number[r]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_pipeline_is_one_region_per_slice_and_a_hash_edge_joins_everything() {
        // source[0..2] -> map[0..2] (forward): tasks 0,1 sources, 2,3 maps.
        let forward = [(0, 2), (1, 3)];
        assert_eq!(failover_regions(4, &forward), vec![0, 1, 0, 1]);
        // Then map -> sum by hash (all to all): tasks 4,5.
        let mut all = forward.to_vec();
        all.extend([(2, 4), (2, 5), (3, 4), (3, 5)]);
        assert_eq!(failover_regions(6, &all), vec![0; 6]);
        assert_eq!(failover_regions(3, &[]), vec![0, 1, 2]);
    }
}
