// Constructors of the scheduler classes (one file each); make_scheduler picks by class name.
#pragma once
#include <memory>

#include "infer/scheduler.h"

namespace sd::infer::detail {

std::unique_ptr<Scheduler> make_ddpm(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_ddim(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_pndm(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_euler(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_euler_ancestral(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_heun(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_dpm_solver(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_unipc(const SchedulerConfig& c);
std::unique_ptr<Scheduler> make_lcm(const SchedulerConfig& c);

}  // namespace sd::infer::detail
