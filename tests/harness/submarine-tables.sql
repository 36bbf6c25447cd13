-- Submarine's DDL for the three metastore tables Periscope writes (from Submarine's
-- submarine.sql). Loaded by tests/harness/mariadb.rs and bench/metrics.
CREATE TABLE `experiment` (
  `id` varchar(64) NOT NULL COMMENT 'Primary Key',
  `experiment_spec` text NOT NULL COMMENT 'experiment spec (json)',
  `create_by` varchar(32) DEFAULT NULL COMMENT 'create user',
  `create_time` datetime DEFAULT NULL COMMENT 'create time',
  `update_by` varchar(32) DEFAULT NULL COMMENT 'last update user',
  `update_time` datetime DEFAULT NULL COMMENT 'last update time',
  `experiment_status` varchar(20) DEFAULT NULL COMMENT 'experiment status',
  `accepted_time` datetime(3) DEFAULT NULL COMMENT 'experiment accepted time',
  `running_time` datetime(3) DEFAULT NULL COMMENT 'experiment running time',
  `finished_time` datetime(3) DEFAULT NULL COMMENT 'experiment finished time',
  `uid` varchar(64) DEFAULT NULL COMMENT 'experiment uid',
  PRIMARY KEY  (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
CREATE TABLE `metric` (
  `id` varchar(64) NOT NULL COMMENT 'Id of the Experiment',
  `key` varchar(190) NOT NULL COMMENT 'Metric key: `String` (limit 190 characters).',
  `value` float NOT NULL COMMENT 'Metric value: `Float`. Defined as *Non-null* in schema.',
  `worker_index` varchar(32) NOT NULL COMMENT 'Metric worker_index: `String` (limit 32 characters).',
  `timestamp` datetime(3) NOT NULL COMMENT 'Timestamp recorded for this metric entry.',
  `step` bigint(11) NOT NULL COMMENT 'Step recorded for this metric entry: `BigInteger`.',
  `is_nan` BOOLEAN NOT NULL COMMENT 'True if the value is in fact NaN.',
  CONSTRAINT `metric_pk` PRIMARY KEY  (`id`, `key`, `timestamp`, `worker_index`),
  FOREIGN KEY(`id`) REFERENCES `experiment`(`id`) ON UPDATE CASCADE ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
CREATE TABLE `param` (
  `id` varchar(64) NOT NULL COMMENT 'Id of the Experiment',
  `key` varchar(190) NOT NULL COMMENT '`String` (limit 190 characters).',
  `value` varchar(190) NOT NULL COMMENT '`String` (limit 190 characters).',
  `worker_index` varchar(32) NOT NULL COMMENT '`String` (limit 32 characters).',
  CONSTRAINT `param_pk` PRIMARY KEY  (`id`, `key`, `worker_index`),
  FOREIGN KEY(`id`) REFERENCES `experiment`(`id`) ON UPDATE CASCADE ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8;
